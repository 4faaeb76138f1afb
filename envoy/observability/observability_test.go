// Package observability checks the files of ../../observability and the
// Envoy tracing variant (../envoy-tracing.yaml): the Grafana dashboard
// parses and every PromQL expression in it and in the alert rules parses
// with Prometheus's own parser; every proxysession_* metric they use is
// one that the binary exports (read from a running instance's /metrics);
// the Kubernetes forms hold the same dashboard and rules; the Envoy
// configuration passes go-control-plane's validation.
//
// It lives in the envoy module because Prometheus's parser is a heavy
// dependency the root module does not take. Regenerate the Kubernetes
// forms after editing the dashboard or the rules:
//
//	cd envoy && go test ./observability/ -run KubernetesForms -update
package observability

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"google.golang.org/protobuf/encoding/protojson"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the Kubernetes forms from the dashboard and the rules")

const (
	dir            = "../../observability"
	dashboardFile  = dir + "/grafana/proxysession.json"
	rulesFile      = dir + "/prometheus/alerts.yaml"
	configMapFile  = dir + "/kubernetes/grafana-dashboard-configmap.yaml"
	promRuleFile   = dir + "/kubernetes/prometheusrule.yaml"
	envoyTracing   = "../envoy-tracing.yaml"
	proxyMetricPfx = "proxysession_"
)

// foreignMetrics are the metrics of other programs the rules may use:
// Envoy's and Istio's request counters (see alerts.yaml).
var foreignMetrics = []string{"envoy_http_downstream_rq_total", "istio_requests_total"}

func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var promql = parser.NewParser(parser.Options{})

// grafanaVars replaces Grafana's variables with values PromQL accepts.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "5m", "${__rate_interval}", "5m", "$__interval", "1m", "$__range", "1h",
	"${job}", ".*", "$job", ".*",
)

// metricNames parses expr and returns the metric names it selects.
func metricNames(t *testing.T, where, expr string) []string {
	t.Helper()
	e, err := promql.ParseExpr(expr)
	if err != nil {
		t.Errorf("%s: %q: %v", where, expr, err)
		return nil
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			name := vs.Name
			for _, m := range vs.LabelMatchers {
				if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
					name = m.Value
				}
			}
			if name == "" {
				t.Errorf("%s: %q selects no metric by name", where, expr)
			}
			names = append(names, name)
		}
		return nil
	})
	return names
}

// dashboardExprs returns every PromQL expression of the dashboard, by
// where it is: panel targets, and the metrics of label_values queries.
func dashboardExprs(t *testing.T) map[string]string {
	t.Helper()
	var d struct {
		UID        string            `json:"uid"`
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	b := read(t, dashboardFile)
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	if d.UID == "" || len(d.Panels) == 0 {
		t.Fatal("dashboard without uid or panels")
	}
	exprs := map[string]string{}
	ids := map[float64]bool{}
	var walk func(v any, where string)
	walk = func(v any, where string) {
		switch v := v.(type) {
		case map[string]any:
			if id, ok := v["id"].(float64); ok && v["gridPos"] != nil {
				if ids[id] {
					t.Errorf("dashboard: panel id %v used twice", id)
				}
				ids[id] = true
				where = v["title"].(string)
			}
			if e, ok := v["expr"].(string); ok {
				exprs[where+" "+v["refId"].(string)] = e
			}
			for _, c := range v {
				walk(c, where)
			}
		case []any:
			for _, c := range v {
				walk(c, where)
			}
		}
	}
	for _, p := range d.Panels {
		var v any
		if err := json.Unmarshal(p, &v); err != nil {
			t.Fatal(err)
		}
		walk(v, "")
	}
	labelValues := regexp.MustCompile(`^label_values\(([^,]+),\s*\w+\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct{ Query string }
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("variable %s: %v", v.Name, err)
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(metric, label)", v.Name, q.Query)
			continue
		}
		exprs["variable "+v.Name] = m[1]
	}
	return exprs
}

// ruleGroups parses the rules file as Prometheus does.
func ruleGroups(t *testing.T) *rulefmt.RuleGroups {
	t.Helper()
	groups, errs := rulefmt.ParseFile(rulesFile, false, model.UTF8Validation, promql, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Error(err)
	}
	if groups == nil || len(groups.Groups) == 0 {
		t.Fatal("no rule groups")
	}
	return groups
}

// usedMetrics returns the metrics the dashboard and the rules use, each
// with one place that uses it.
func usedMetrics(t *testing.T) map[string]string {
	t.Helper()
	used := map[string]string{}
	for where, e := range dashboardExprs(t) {
		for _, n := range metricNames(t, "dashboard "+where, grafanaVars.Replace(e)) {
			used[n] = "dashboard " + where
		}
	}
	for _, g := range ruleGroups(t).Groups {
		for _, r := range g.Rules {
			for _, n := range metricNames(t, "rule "+r.Alert, r.Expr) {
				used[n] = "rule " + r.Alert
			}
		}
	}
	return used
}

func TestDashboardAndRulesParse(t *testing.T) {
	used := usedMetrics(t)
	for name, where := range used {
		if !strings.HasPrefix(name, proxyMetricPfx) && !slices.Contains(foreignMetrics, name) {
			t.Errorf("%s uses %s, neither proxysession's nor a known proxy metric", where, name)
		}
	}
	for _, g := range ruleGroups(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("rule %q lacks a name, a severity or a summary", r.Alert)
			}
		}
	}
}

// TestMetricNamesExported runs the binary and checks every proxysession_*
// metric of the dashboard and the rules against its /metrics.
func TestMetricNamesExported(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs proxysession")
	}
	exported := scrape(t, startProxysession(t))
	var missing []string
	for name, where := range usedMetrics(t) {
		if strings.HasPrefix(name, proxyMetricPfx) && !exported[name] {
			missing = append(missing, name+" ("+where+")")
		}
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("not exported by proxysession: %s", m)
	}
}

// startProxysession builds and starts the binary on free ports and
// returns its admin address.
func startProxysession(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "proxysession")
	build := exec.Command("go", "build", "-o", bin, "./cmd/proxysession")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-grpc-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0", "-log-format", "json")
	cmd.Env = append(os.Environ(), "PROXYSESSION_STORE=memory")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var line struct{ Msg, Admin string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "proxysession serving" {
				addr <- line.Admin
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	select {
	case a := <-addr:
		return a
	case <-time.After(30 * time.Second):
		t.Fatal("proxysession did not start")
	}
	return ""
}

// scrape returns the names of the series /metrics serves, with the
// _bucket, _sum and _count series of histograms and summaries.
func scrape(t *testing.T, admin string) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	names := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 4 || f[0] != "#" || f[1] != "TYPE" {
			continue
		}
		names[f[2]] = true
		if f[3] == "histogram" || f[3] == "summary" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[f[2]+s] = true
			}
		}
	}
	if !names["proxysession_messages_total"] {
		t.Fatalf("/metrics lacks proxysession_messages_total: %v", names)
	}
	return names
}

// The Kubernetes forms: the dashboard in a ConfigMap for the Grafana
// sidecar (label grafana_dashboard), the rules in a PrometheusRule.

func configMap(dashboard []byte) []byte {
	var b bytes.Buffer
	b.WriteString(`# The proxysession Grafana dashboard, for Grafana's dashboard sidecar
# (kube-prometheus-stack: sidecar.dashboards.enabled, label
# grafana_dashboard). Generated from ../grafana/proxysession.json by
#   cd envoy && go test ./observability/ -run KubernetesForms -update
# Apply it in the namespace the sidecar watches.
apiVersion: v1
kind: ConfigMap
metadata:
  name: proxysession-grafana-dashboard
  labels:
    grafana_dashboard: "1"
data:
  proxysession.json: |
`)
	for line := range strings.Lines(string(dashboard)) {
		if strings.TrimSpace(line) != "" {
			b.WriteString("    ")
		}
		b.WriteString(line)
	}
	return b.Bytes()
}

func prometheusRule(rules []byte) []byte {
	var b bytes.Buffer
	b.WriteString(`# proxysession's alert rules for the Prometheus Operator. Generated from
# ../prometheus/alerts.yaml by
#   cd envoy && go test ./observability/ -run KubernetesForms -update
# Give it the labels your Prometheus's ruleSelector wants (kube-prometheus-
# stack: release: <its release name>).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: proxysession
  labels:
    app.kubernetes.io/name: proxysession
spec:
`)
	started := false
	for line := range strings.Lines(string(rules)) {
		started = started || strings.HasPrefix(line, "groups:")
		if !started {
			continue
		}
		if strings.TrimSpace(line) != "" {
			b.WriteString("  ")
		}
		b.WriteString(line)
	}
	return b.Bytes()
}

func TestKubernetesForms(t *testing.T) {
	dashboard, rules := read(t, dashboardFile), read(t, rulesFile)
	wantCM, wantPR := configMap(dashboard), prometheusRule(rules)
	if *update {
		for path, b := range map[string][]byte{configMapFile: wantCM, promRuleFile: wantPR} {
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := read(t, configMapFile); !bytes.Equal(got, wantCM) {
		t.Errorf("%s is out of date: run with -update", configMapFile)
	}
	if got := read(t, promRuleFile); !bytes.Equal(got, wantPR) {
		t.Errorf("%s is out of date: run with -update", promRuleFile)
	}

	var cm corev1.ConfigMap
	if err := yaml.UnmarshalStrict(read(t, configMapFile), &cm); err != nil {
		t.Fatal(err)
	}
	if cm.Labels["grafana_dashboard"] != "1" || cm.Data["proxysession.json"] != string(dashboard) {
		t.Errorf("ConfigMap: labels %v, dashboard equal to the file: %v", cm.Labels, cm.Data["proxysession.json"] == string(dashboard))
	}
	var pr monitoringv1.PrometheusRule
	if err := yaml.UnmarshalStrict(read(t, promRuleFile), &pr); err != nil {
		t.Fatal(err)
	}
	groups := ruleGroups(t)
	if len(pr.Spec.Groups) != len(groups.Groups) {
		t.Fatalf("PrometheusRule has %d groups, the rules file %d", len(pr.Spec.Groups), len(groups.Groups))
	}
	for i, g := range groups.Groups {
		pg := pr.Spec.Groups[i]
		if pg.Name != g.Name || len(pg.Rules) != len(g.Rules) {
			t.Fatalf("PrometheusRule group %q differs from the rules file's %q", pg.Name, g.Name)
		}
		for j, r := range g.Rules {
			pr := pg.Rules[j]
			if pr.Alert != r.Alert || pr.Expr.String() != r.Expr || (pr.For == nil) != (r.For == 0) {
				t.Errorf("PrometheusRule rule %q differs from the rules file's %q", pr.Alert, r.Alert)
			}
		}
	}
}

// TestEnvoyTracingConfig: the tracing variant of envoy.yaml is a valid
// bootstrap whose HTTP connection manager traces with the OpenTelemetry
// tracer to a cluster that exists, speaking HTTP/2 (OTLP/gRPC).
func TestEnvoyTracingConfig(t *testing.T) {
	j, err := yaml.YAMLToJSON(read(t, envoyTracing))
	if err != nil {
		t.Fatal(err)
	}
	var bs bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(j, &bs); err != nil {
		t.Fatal(err)
	}
	if err := bs.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	var hcm hcmv3.HttpConnectionManager
	if err := bs.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	if err := hcm.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	var otel tracev3.OpenTelemetryConfig
	if err := hcm.GetTracing().GetProvider().GetTypedConfig().UnmarshalTo(&otel); err != nil {
		t.Fatalf("tracing provider: %v", err)
	}
	if err := otel.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	collector := otel.GetGrpcService().GetEnvoyGrpc().GetClusterName()
	found := false
	for _, c := range bs.GetStaticResources().GetClusters() {
		if c.GetName() == collector {
			found = c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"] != nil
		}
	}
	if !found {
		t.Errorf("no HTTP/2 cluster %q for the collector", collector)
	}
	var names []string
	for _, f := range hcm.GetHttpFilters() {
		names = append(names, f.GetName())
	}
	if !slices.Equal(names, []string{"envoy.filters.http.ext_proc", "envoy.filters.http.router"}) {
		t.Errorf("filters %v", names)
	}
}
