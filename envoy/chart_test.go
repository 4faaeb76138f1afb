package envoy_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/protobuf/encoding/protojson"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/loader"
	releasev1 "helm.sh/helm/v4/pkg/release/v1"
	istiov1alpha3 "istio.io/api/networking/v1alpha3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwapiv1b1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/proxysession/proxysession/internal/config"
	"github.com/proxysession/proxysession/processor"
)

const (
	chartDir   = "../charts/proxysession"
	releaseNS  = "proxysession"
	releaseNam = "proxysession"

	// The observability files the chart carries copies of (.Files.Get
	// reads only inside the chart).
	dashboardSource = "../observability/grafana/proxysession.json"
	alertsSource    = "../observability/prometheus/alerts.yaml"
	dashboardCopy   = chartDir + "/files/proxysession.json"
	alertsCopy      = chartDir + "/files/alerts.yaml"
)

// render renders the chart as `helm template` does (Helm's own SDK, a
// client-side dry run), with vals over the chart's values.
func render(t *testing.T, vals map[string]any) ([]manifest, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	install := action.NewInstall(action.NewConfiguration())
	install.DryRunStrategy = action.DryRunClient
	install.ReleaseName = releaseNam
	install.Namespace = releaseNS
	install.Replace = true
	kv, err := common.ParseKubeVersion("v1.33.0")
	if err != nil {
		t.Fatal(err)
	}
	install.KubeVersion = kv
	rel, err := install.Run(ch, vals)
	if err != nil {
		return nil, err
	}
	r, ok := rel.(*releasev1.Release)
	if !ok {
		t.Fatalf("release of type %T", rel)
	}
	return parseManifests(t, "rendered chart", []byte(r.Manifest)), nil
}

func readValues(t *testing.T, path string) map[string]any {
	t.Helper()
	v, err := common.ReadValuesFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// ciValues are the chart's ci/*-values.yaml files.
func ciValues(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no ci values files: %v", err)
	}
	return files
}

// TestChartLint runs helm lint --strict on the chart with each ci values
// file.
func TestChartLint(t *testing.T) {
	for _, f := range append([]string{""}, ciValues(t)...) {
		vals := map[string]any{}
		if f != "" {
			vals = readValues(t, f)
		}
		lint := action.NewLint()
		lint.Strict = true
		lint.Namespace = releaseNS
		res := lint.Run([]string{chartDir}, vals)
		for _, m := range res.Messages {
			t.Logf("%s: %s", filepath.Base(f), m)
		}
		if len(res.Errors) > 0 {
			t.Errorf("helm lint --strict with %q: %v", filepath.Base(f), errors.Join(res.Errors...))
		}
	}
}

// matrix is every integration × store × TLS, on top of the defaults.
func matrix() map[string]map[string]any {
	out := map[string]map[string]any{}
	for _, mode := range []string{"istio-gateway", "istio-sidecar", "envoy-gateway", "none"} {
		for _, store := range []string{"memory", "redis"} {
			for _, tls := range []bool{false, true} {
				v := map[string]any{
					"integration": map[string]any{"mode": mode,
						"istioSidecar": map[string]any{"namespace": "demo", "selector": map[string]any{"app": "demo"}}},
					"store": map[string]any{"type": store},
					"tls":   map[string]any{"enabled": tls, "certManager": map[string]any{"issuerRef": map[string]any{"name": "ca"}}},
					"metrics": map[string]any{"serviceMonitor": map[string]any{"enabled": true},
						"prometheusRule": map[string]any{"enabled": true}},
					"dashboards": map[string]any{"enabled": true},
				}
				if store == "redis" {
					v["store"] = map[string]any{"type": "redis",
						"redis": map[string]any{"existingSecret": "proxysession-redis"}, "valkey": map[string]any{"enabled": true}}
				}
				out[fmt.Sprintf("%s/%s/tls=%v", mode, store, tls)] = v
			}
		}
	}
	return out
}

// TestChartRenders renders the defaults, every ci values file and the
// whole matrix, and checks every object.
func TestChartRenders(t *testing.T) {
	cases := matrix()
	cases["defaults"] = map[string]any{}
	for _, f := range ciValues(t) {
		cases["ci/"+filepath.Base(f)] = readValues(t, f)
	}
	for _, name := range slices.Sorted(maps.Keys(cases)) {
		t.Run(name, func(t *testing.T) {
			ms, err := render(t, cases[name])
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			checkRelease(t, ms)
		})
	}
}

// TestChartDefaults: helm install with no values gives one memory-store
// replica and the Istio ingress gateway integration.
func TestChartDefaults(t *testing.T) {
	ms, err := render(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := checkRelease(t, ms)
	if r.cfg.Store != "memory" || *r.deploy.Spec.Replicas != 1 || r.envoyFilter == nil || r.envoyFilter.Namespace != "istio-system" {
		t.Errorf("defaults: store %s, %d replicas, EnvoyFilter %v", r.cfg.Store, *r.deploy.Spec.Replicas, r.envoyFilter != nil)
	}
}

// TestGatewaySelector: the EnvoyFilter selects the gateway pods by
// exactly the labels given, for each way of installing a gateway, and by
// istioctl's istio: ingressgateway when none are given.
func TestGatewaySelector(t *testing.T) {
	for _, sel := range []map[string]string{
		nil,                  // istioctl / IstioOperator
		{"istio": "ingress"}, // Istio's gateway Helm chart, release istio-ingress
		{"gateway.networking.k8s.io/gateway-name": "web"}, // Gateway API
	} {
		var selector map[string]any // Helm's values are JSON-like
		for k, v := range sel {
			if selector == nil {
				selector = map[string]any{}
			}
			selector[k] = v
		}
		vals := map[string]any{"integration": map[string]any{"istioGateway": map[string]any{"selector": selector}}}
		ms, err := render(t, vals)
		if err != nil {
			t.Fatal(err)
		}
		r := checkRelease(t, ms)
		want := sel
		if want == nil {
			want = map[string]string{"istio": "ingressgateway"}
		}
		if got := r.envoyFilterSpec.GetWorkloadSelector().GetLabels(); !maps.Equal(got, want) {
			t.Errorf("selector %v: the EnvoyFilter selects %v", sel, got)
		}
	}
}

// TestChartRefuses: combinations that cannot work do not render.
func TestChartRefuses(t *testing.T) {
	for name, tc := range map[string]struct {
		vals map[string]any
		want string
	}{
		"two integrations":           {map[string]any{"integration": map[string]any{"mode": "istio-gateway,istio-sidecar"}}, "mode"},
		"a list of integrations":     {map[string]any{"integration": map[string]any{"mode": []any{"istio-gateway", "envoy-gateway"}}}, "mode"},
		"memory with replicas":       {map[string]any{"replicaCount": 2}, "replicaCount must be 1"},
		"redis without an address":   {map[string]any{"store": map[string]any{"type": "redis"}}, "store.redis.addr"},
		"valkey without a password":  {map[string]any{"store": map[string]any{"type": "redis", "valkey": map[string]any{"enabled": true}}}, "existingSecret"},
		"sidecar without a selector": {map[string]any{"integration": map[string]any{"mode": "istio-sidecar", "istioSidecar": map[string]any{"namespace": "demo"}}}, "istioSidecar"},
		"short drain delay":          {map[string]any{"drain": map[string]any{"delay": "10s"}}, "drain.delay"},
		"GOMEMLIMIT at the limit":    {map[string]any{"goMemLimitPercent": 100}, "goMemLimitPercent"},
		"tls without an issuer":      {map[string]any{"tls": map[string]any{"enabled": true}}, "issuerRef.name"},
		// The kubelet would make the state file group-readable at each
		// mount, and proxysession would refuse it.
		"persistence with fsGroupChangePolicy Always": {map[string]any{"podSecurityContext": map[string]any{"fsGroupChangePolicy": "Always"}}, "fsGroupChangePolicy"},
		"persistence without fsGroup":                 {map[string]any{"podSecurityContext": map[string]any{"fsGroup": nil}}, "fsGroup"},
		"a state interval under 1s":                   {map[string]any{"store": map[string]any{"memory": map[string]any{"persistence": map[string]any{"interval": "500ms"}}}}, "interval"},
		"a state interval that is no duration":        {map[string]any{"store": map[string]any{"memory": map[string]any{"persistence": map[string]any{"interval": "often"}}}}, "interval"},
		"tracing without an endpoint":                 {map[string]any{"tracing": map[string]any{"enabled": true}}, "tracing.endpoint"},
		"tracing over another protocol":               {map[string]any{"tracing": map[string]any{"enabled": true, "endpoint": "http://otel:4318", "protocol": "http/json"}}, "protocol"},
		"a sampler the SDK does not know":             {map[string]any{"tracing": map[string]any{"enabled": true, "endpoint": "http://otel:4318", "sampler": "jaeger_remote"}}, "sampler"},
		"a sampling ratio above 1":                    {map[string]any{"tracing": map[string]any{"enabled": true, "endpoint": "http://otel:4318", "samplerArg": "10"}}, "samplerArg"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := render(t, tc.vals)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("rendered, or failed without naming %q: %v", tc.want, err)
			}
		})
	}
}

// release is what checkRelease found in a rendered chart.
type release struct {
	cfg             *config.Config
	deploy          *appsv1.Deployment
	services        map[string]*corev1.Service
	pdb             *policyv1.PodDisruptionBudget
	netpols         []*networkingv1.NetworkPolicy
	valkey          *appsv1.StatefulSet
	envoyFilter     *metav1.ObjectMeta
	envoyFilterSpec *istiov1alpha3.EnvoyFilter
	cluster         *clusterv3.Cluster
	extProc         *extprocv3.ExternalProcessor
	eep             *egv1a1.EnvoyExtensionPolicy
	refGrants       []*gwapiv1b1.ReferenceGrant
	backendTLS      *gwapiv1.BackendTLSPolicy
	serviceMonitor  *monitoringv1.ServiceMonitor
	rule            *monitoringv1.PrometheusRule
	certs           []certificate
	pvcs            []*corev1.PersistentVolumeClaim
	dashboard       *corev1.ConfigMap
	env             map[string]string // the container's plain environment
}

// certificate is the part of a cert-manager Certificate the chart sets,
// decoded strictly (cert-manager's API types are not a dependency).
type certificate struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       struct {
		SecretName  string   `json:"secretName"`
		Duration    string   `json:"duration"`
		RenewBefore string   `json:"renewBefore"`
		CommonName  string   `json:"commonName"`
		DNSNames    []string `json:"dnsNames"`
		Usages      []string `json:"usages"`
		PrivateKey  struct {
			Algorithm      string `json:"algorithm"`
			Size           int    `json:"size"`
			RotationPolicy string `json:"rotationPolicy"`
		} `json:"privateKey"`
		IssuerRef struct {
			Group, Kind, Name string
		} `json:"issuerRef"`
	} `json:"spec"`
}

// checkRelease decodes every rendered object strictly with its project's
// API types and checks the objects against each other.
func checkRelease(t *testing.T, ms []manifest) *release {
	t.Helper()
	r := &release{services: map[string]*corev1.Service{}}
	for _, m := range ms {
		switch m.kind {
		case "v1/ServiceAccount":
			strict(t, m, &corev1.ServiceAccount{})
		case "apps/v1/Deployment":
			if r.deploy != nil {
				t.Error("two Deployments")
			}
			r.deploy = &appsv1.Deployment{}
			strict(t, m, r.deploy)
		case "v1/Service":
			svc := &corev1.Service{}
			strict(t, m, svc)
			r.services[svc.Name] = svc
		case "policy/v1/PodDisruptionBudget":
			r.pdb = &policyv1.PodDisruptionBudget{}
			strict(t, m, r.pdb)
		case "networking.k8s.io/v1/NetworkPolicy":
			np := &networkingv1.NetworkPolicy{}
			strict(t, m, np)
			r.netpols = append(r.netpols, np)
		case "apps/v1/StatefulSet":
			r.valkey = &appsv1.StatefulSet{}
			strict(t, m, r.valkey)
		case "networking.istio.io/v1alpha3/EnvoyFilter":
			if r.envoyFilter != nil || r.eep != nil {
				t.Error("two integrations in one release: every request would be processed twice")
			}
			var obj struct {
				APIVersion string            `json:"apiVersion"`
				Kind       string            `json:"kind"`
				Metadata   metav1.ObjectMeta `json:"metadata"`
				Spec       jsonRaw           `json:"spec"`
			}
			strict(t, m, &obj)
			r.envoyFilter = &obj.Metadata
			r.envoyFilterSpec = &istiov1alpha3.EnvoyFilter{}
			unmarshal(t, "EnvoyFilter spec", obj.Spec, r.envoyFilterSpec)
		case "gateway.envoyproxy.io/v1alpha1/EnvoyExtensionPolicy":
			if r.envoyFilter != nil || r.eep != nil {
				t.Error("two integrations in one release: every request would be processed twice")
			}
			r.eep = &egv1a1.EnvoyExtensionPolicy{}
			strict(t, m, r.eep)
		case "gateway.networking.k8s.io/v1beta1/ReferenceGrant":
			rg := &gwapiv1b1.ReferenceGrant{}
			strict(t, m, rg)
			r.refGrants = append(r.refGrants, rg)
		case "gateway.networking.k8s.io/v1/BackendTLSPolicy":
			r.backendTLS = &gwapiv1.BackendTLSPolicy{}
			strict(t, m, r.backendTLS)
		case "monitoring.coreos.com/v1/ServiceMonitor":
			r.serviceMonitor = &monitoringv1.ServiceMonitor{}
			strict(t, m, r.serviceMonitor)
		case "monitoring.coreos.com/v1/PrometheusRule":
			r.rule = &monitoringv1.PrometheusRule{}
			strict(t, m, r.rule)
		case "cert-manager.io/v1/Certificate":
			var c certificate
			strict(t, m, &c)
			r.certs = append(r.certs, c)
		case "v1/PersistentVolumeClaim":
			pvc := &corev1.PersistentVolumeClaim{}
			strict(t, m, pvc)
			r.pvcs = append(r.pvcs, pvc)
		case "v1/ConfigMap":
			if r.dashboard != nil {
				t.Error("two ConfigMaps")
			}
			r.dashboard = &corev1.ConfigMap{}
			strict(t, m, r.dashboard)
		default:
			t.Errorf("unexpected object %s %s", m.kind, m.name)
		}
		if m.kind != "v1/Namespace" && m.namespace == "" {
			t.Errorf("%s %s has no namespace: kubectl apply of the rendered chart would put it in the current one", m.kind, m.name)
		}
	}
	if r.deploy == nil {
		t.Fatal("no Deployment")
	}
	r.cfg, _ = checkDeployment(t, "chart", r.deploy)
	r.env = map[string]string{}
	for _, e := range r.deploy.Spec.Template.Spec.Containers[0].Env {
		if e.ValueFrom == nil {
			r.env[e.Name] = e.Value
		}
	}
	checkChartDeployment(t, r)
	checkPersistence(t, r)
	checkTracing(t, r)
	checkServices(t, r)
	checkNetworkPolicies(t, r)
	checkTLS(t, r)
	if r.envoyFilterSpec != nil {
		checkEnvoyFilter(t, r)
	}
	if r.eep != nil {
		checkExtensionPolicy(t, r)
	}
	checkMonitoring(t, r)
	checkDashboard(t, r)
	return r
}

func envOf(c corev1.Container, name string) (corev1.EnvVar, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e, true
		}
	}
	return corev1.EnvVar{}, false
}

// checkChartDeployment: replicas, rollout and disruption budget by store,
// GOMEMLIMIT headroom, the termination grace period, the store's address.
func checkChartDeployment(t *testing.T, r *release) {
	t.Helper()
	d, cfg := r.deploy, r.cfg
	c := d.Spec.Template.Spec.Containers[0]
	switch cfg.Store {
	case "memory":
		if *d.Spec.Replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
			t.Error("with the in-memory store, one replica, never two at once: more would split sessions")
		}
	case "redis":
		ru := d.Spec.Strategy.RollingUpdate
		if *d.Spec.Replicas < 2 || d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || ru == nil ||
			ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 || ru.MaxSurge == nil || ru.MaxSurge.IntValue() < 1 {
			t.Errorf("redis store: %d replicas, strategy %+v: want several replicas, RollingUpdate with maxUnavailable 0", *d.Spec.Replicas, d.Spec.Strategy)
		}
		if len(d.Spec.Template.Spec.TopologySpreadConstraints) == 0 {
			t.Error("redis store: replicas not spread over nodes")
		}
		if r.pdb == nil {
			t.Fatal("redis store: no PodDisruptionBudget")
		}
		pdb := r.pdb.Spec
		switch {
		case pdb.MaxUnavailable != nil:
			if n := pdb.MaxUnavailable.IntValue(); n < 1 || n >= int(*d.Spec.Replicas) {
				t.Errorf("PDB maxUnavailable %d with %d replicas", n, *d.Spec.Replicas)
			}
		case pdb.MinAvailable != nil:
			if n := pdb.MinAvailable.IntValue(); n < 1 || n >= int(*d.Spec.Replicas) {
				t.Errorf("PDB minAvailable %d with %d replicas", n, *d.Spec.Replicas)
			}
		default:
			t.Error("PDB without a budget")
		}
		want := ""
		if r.valkey != nil {
			var vsvc *corev1.Service
			for _, s := range r.services {
				if s.Spec.Selector["app.kubernetes.io/name"] == "valkey" {
					vsvc = s
				}
			}
			if vsvc == nil {
				t.Fatal("no Valkey Service")
			}
			want = fmt.Sprintf("%s.%s.svc.cluster.local:%d", vsvc.Name, vsvc.Namespace, vsvc.Spec.Ports[0].Port)
			if len(cfg.Redis.Addrs) != 1 || cfg.Redis.Addrs[0] != want {
				t.Errorf("proxysession uses Redis at %v, the Valkey Service is %s", cfg.Redis.Addrs, want)
			}
			vc := r.valkey.Spec.Template.Spec.Containers[0]
			checkMaxmemory(t, "chart Valkey", vc.Args, vc.Resources.Limits.Memory().Value())
			ps, _ := envOf(c, "PROXYSESSION_REDIS_PASSWORD")
			vk, _ := envOf(vc, "REDIS_PASSWORD")
			if ps.ValueFrom == nil || vk.ValueFrom == nil || *ps.ValueFrom.SecretKeyRef != *vk.ValueFrom.SecretKeyRef {
				t.Errorf("proxysession's password comes from %+v, Valkey's from %+v", ps.ValueFrom, vk.ValueFrom)
			}
			if sc := vc.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || r.valkey.Spec.Template.Spec.SecurityContext.RunAsNonRoot == nil {
				t.Error("Valkey's pod is not hardened like proxysession's")
			}
		}
	}

	// GOMEMLIMIT: the Go runtime's soft limit must leave headroom under
	// the container's limit, or the kernel kills the process first.
	e, _ := envOf(c, "GOMEMLIMIT")
	limit := c.Resources.Limits.Memory().Value()
	gml, err := config.ParseSize(e.Value)
	if err != nil || e.ValueFrom != nil || limit == 0 || gml < limit*80/100 || gml > limit*95/100 {
		t.Errorf("GOMEMLIMIT %q (%+v) with a memory limit of %d: want 80-95%% of the limit", e.Value, e.ValueFrom, limit)
	}
	// terminationGracePeriodSeconds covers the drain delay, the grace for
	// streams in flight, and the admin server's shutdown (5s).
	tgp := time.Duration(*d.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
	if tgp <= cfg.DrainDelay+cfg.ShutdownGrace+5*time.Second {
		t.Errorf("terminationGracePeriodSeconds %v: not above drain %v + grace %v + admin shutdown 5s", tgp, cfg.DrainDelay, cfg.ShutdownGrace)
	}
}

// checkServices: the headless Service Envoy resolves selects the pods and
// has their gRPC port.
func checkServices(t *testing.T, r *release) {
	t.Helper()
	var headless *corev1.Service
	for _, s := range r.services {
		if s.Spec.ClusterIP == corev1.ClusterIPNone && s.Spec.Selector["app.kubernetes.io/name"] == "proxysession" {
			headless = s
		}
	}
	if headless == nil {
		t.Fatal("no headless Service: a ClusterIP resolves to one address, so Envoy would have one host")
	}
	if headless.Spec.PublishNotReadyAddresses {
		t.Error("the headless Service publishes pods that are not ready")
	}
	for _, s := range r.services {
		if s.Spec.Selector["app.kubernetes.io/name"] == "valkey" {
			continue
		}
		if !mapsEqual(s.Spec.Selector, r.deploy.Spec.Template.Labels) {
			t.Errorf("Service %s selects %v, pods have %v", s.Name, s.Spec.Selector, r.deploy.Spec.Template.Labels)
		}
		for _, p := range s.Spec.Ports {
			if p.Name == "grpc" && (p.Port != 9002 || p.TargetPort.String() != "grpc" || p.AppProtocol == nil || *p.AppProtocol != "grpc") {
				t.Errorf("Service %s port %+v: want 9002 to grpc, appProtocol grpc", s.Name, p)
			}
		}
	}
	if r.pdb != nil && !mapsEqual(r.pdb.Spec.Selector.MatchLabels, r.deploy.Spec.Template.Labels) {
		t.Errorf("PDB selects %v", r.pdb.Spec.Selector)
	}
}

func headlessService(t *testing.T, r *release) *corev1.Service {
	t.Helper()
	for _, s := range r.services {
		if s.Spec.ClusterIP == corev1.ClusterIPNone && s.Spec.Selector["app.kubernetes.io/name"] == "proxysession" {
			return s
		}
	}
	t.Fatal("no headless Service")
	return nil
}

func clusterIPService(t *testing.T, r *release) *corev1.Service {
	t.Helper()
	for _, s := range r.services {
		if s.Spec.ClusterIP != corev1.ClusterIPNone && s.Spec.Selector["app.kubernetes.io/name"] == "proxysession" {
			return s
		}
	}
	t.Fatal("no proxysession Service")
	return nil
}

// checkNetworkPolicies: proxysession's pods admit the gRPC port only from
// the integration's proxies; Valkey only from proxysession.
func checkNetworkPolicies(t *testing.T, r *release) {
	t.Helper()
	var own *networkingv1.NetworkPolicy
	for _, np := range r.netpols {
		if mapsEqual(np.Spec.PodSelector.MatchLabels, r.deploy.Spec.Template.Labels) {
			own = np
		} else if r.valkey != nil && mapsEqual(np.Spec.PodSelector.MatchLabels, r.valkey.Spec.Template.Labels) {
			if len(np.Spec.Ingress) != 1 || len(np.Spec.Ingress[0].From) != 1 || !mapsEqual(np.Spec.Ingress[0].From[0].PodSelector.MatchLabels, r.deploy.Spec.Template.Labels) {
				t.Errorf("Valkey's NetworkPolicy admits %+v", np.Spec.Ingress)
			}
		} else {
			t.Errorf("NetworkPolicy %s selects %v", np.Name, np.Spec.PodSelector.MatchLabels)
		}
	}
	if own == nil {
		t.Fatal("no NetworkPolicy: anyone in the cluster can open ext_proc streams and read every cookie")
	}
	if !slices.Contains(own.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
		t.Error("the NetworkPolicy does not restrict ingress")
	}
	var grpcFrom []networkingv1.NetworkPolicyPeer
	for _, rule := range own.Spec.Ingress {
		if len(rule.Ports) == 0 || len(rule.From) == 0 {
			t.Errorf("ingress rule %+v admits every port or every peer", rule)
		}
		for _, p := range rule.Ports {
			if p.Port != nil && p.Port.String() == "grpc" {
				grpcFrom = append(grpcFrom, rule.From...)
			}
		}
	}
	var wantNS string
	var wantPods map[string]string
	switch {
	case r.envoyFilter != nil:
		wantNS, wantPods = r.envoyFilter.Namespace, r.envoyFilterSpec.GetWorkloadSelector().GetLabels()
	case r.eep != nil:
		wantPods = map[string]string{"app.kubernetes.io/managed-by": "envoy-gateway", "app.kubernetes.io/component": "proxy"}
	}
	if wantPods == nil {
		return
	}
	var admitted bool
	for _, peer := range grpcFrom {
		if peer.PodSelector == nil || peer.NamespaceSelector == nil {
			continue
		}
		nsOK := wantNS == "" || peer.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] == wantNS
		if nsOK && maps.Equal(peer.PodSelector.MatchLabels, wantPods) {
			admitted = true
		}
	}
	if !admitted {
		t.Errorf("the NetworkPolicy admits %+v on the gRPC port, not the proxies %v in %q", grpcFrom, wantPods, wantNS)
	}
}

// checkTLS: with TLS, proxysession serves mTLS from a Secret that a
// Certificate of the release (or the user) provides, and the proxies
// present a client certificate from their own namespace.
func checkTLS(t *testing.T, r *release) {
	t.Helper()
	cfg := r.cfg
	c := r.deploy.Spec.Template.Spec
	if cfg.TLSCert == "" {
		secretVolumes := slices.ContainsFunc(c.Volumes, func(v corev1.Volume) bool { return v.Secret != nil })
		if len(r.certs) > 0 || secretVolumes {
			t.Error("certificates without TLS")
		}
		return
	}
	if cfg.TLSClientCA == "" {
		t.Error("TLS without client certificates: anyone who reaches the port can use it")
	}
	var secret string
	for _, v := range c.Volumes {
		for _, m := range c.Containers[0].VolumeMounts {
			if m.Name == v.Name && v.Secret != nil && strings.HasPrefix(cfg.TLSCert, m.MountPath+"/") &&
				strings.HasPrefix(cfg.TLSKey, m.MountPath+"/") && strings.HasPrefix(cfg.TLSClientCA, m.MountPath+"/") {
				secret = v.Secret.SecretName
			}
		}
	}
	if secret == "" {
		t.Fatalf("the TLS files %s, %s, %s are not in a mounted Secret", cfg.TLSCert, cfg.TLSKey, cfg.TLSClientCA)
	}
	for _, cert := range r.certs {
		if cert.Metadata.Namespace == releaseNS && cert.Spec.SecretName == secret {
			if !slices.Contains(cert.Spec.Usages, "server auth") || len(cert.Spec.DNSNames) == 0 {
				t.Errorf("server Certificate %+v", cert.Spec)
			}
		}
	}
}

// checkEnvoyFilter checks an EnvoyFilter patch by patch, as the loose
// manifests were: every value validated as the Envoy message it patches.
func checkEnvoyFilter(t *testing.T, r *release) {
	t.Helper()
	ef := r.envoyFilterSpec
	context := istiov1alpha3.EnvoyFilter_GATEWAY
	if r.envoyFilter.Namespace != "istio-system" && len(ef.GetWorkloadSelector().GetLabels()) > 0 {
		if _, gw := ef.GetWorkloadSelector().GetLabels()["istio"]; !gw {
			if _, gwAPI := ef.GetWorkloadSelector().GetLabels()["gateway.networking.k8s.io/gateway-name"]; !gwAPI {
				context = istiov1alpha3.EnvoyFilter_SIDECAR_INBOUND
			}
		}
	}
	if len(ef.GetWorkloadSelector().GetLabels()) == 0 {
		t.Error("no workloadSelector: the filter would apply to every proxy in the namespace")
	}
	headless := headlessService(t, r)
	serviceHost := headless.Name + "." + headless.Namespace + ".svc.cluster.local"
	var filterCluster string
	for i, cp := range ef.GetConfigPatches() {
		value, err := protojson.Marshal(cp.GetPatch().GetValue())
		if err != nil {
			t.Fatal(err)
		}
		where := fmt.Sprintf("EnvoyFilter patch %d", i)
		switch cp.GetApplyTo() {
		case istiov1alpha3.EnvoyFilter_CLUSTER:
			var c clusterv3.Cluster
			unmarshal(t, where, value, &c)
			validateDeep(t, where, &c)
			if cp.GetPatch().GetOperation() != istiov1alpha3.EnvoyFilter_Patch_ADD {
				t.Errorf("%s: want operation ADD", where)
			}
			// Istio inserts ADDed clusters for these contexts only.
			if got := cp.GetMatch().GetContext(); got != istiov1alpha3.EnvoyFilter_GATEWAY && got != istiov1alpha3.EnvoyFilter_SIDECAR_OUTBOUND && got != istiov1alpha3.EnvoyFilter_SIDECAR_INBOUND ||
				(context == istiov1alpha3.EnvoyFilter_GATEWAY) != (got == istiov1alpha3.EnvoyFilter_GATEWAY) {
				t.Errorf("%s: cluster added in context %v for a %v filter", where, got, context)
			}
			checkServiceCluster(t, where, &c, serviceHost, grpcPort(t))
			checkDrainArithmetic(t, &c, r.cfg)
			r.cluster = &c
		case istiov1alpha3.EnvoyFilter_HTTP_FILTER:
			var f hcmv3.HttpFilter
			unmarshal(t, where, value, &f)
			validateDeep(t, where, &f)
			if cp.GetMatch().GetContext() != context {
				t.Errorf("%s: context %v, want %v", where, cp.GetMatch().GetContext(), context)
			}
			lm := cp.GetMatch().GetListener().GetFilterChain().GetFilter()
			if cp.GetPatch().GetOperation() != istiov1alpha3.EnvoyFilter_Patch_INSERT_BEFORE ||
				lm.GetName() != "envoy.filters.network.http_connection_manager" || lm.GetSubFilter().GetName() != "envoy.filters.http.router" {
				t.Errorf("%s: want INSERT_BEFORE the router of the http_connection_manager", where)
			}
			var ep extprocv3.ExternalProcessor
			if err := f.GetTypedConfig().UnmarshalTo(&ep); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			checkExtProc(t, where, &ep)
			checkForwardRulesExact(t, where, &ep)
			filterCluster = ep.GetGrpcService().GetEnvoyGrpc().GetClusterName()
			r.extProc = &ep
		default:
			t.Errorf("%s: unexpected applyTo %v", where, cp.GetApplyTo())
		}
	}
	if r.cluster == nil || r.cluster.GetName() != filterCluster {
		t.Errorf("the filter calls cluster %q, the EnvoyFilter declares %v", filterCluster, r.cluster.GetName())
	}
	// mTLS: the cluster presents the client Secret of the proxy's
	// namespace and checks the name in proxysession's certificate.
	ts := r.cluster.GetTransportSocket()
	if (ts != nil) != (r.cfg.TLSCert != "") {
		t.Fatalf("proxysession serves TLS: %v; the cluster speaks TLS: %v", r.cfg.TLSCert != "", ts != nil)
	}
	if ts == nil {
		return
	}
	var tls tlsv3.UpstreamTlsContext
	if err := ts.GetTypedConfig().UnmarshalTo(&tls); err != nil {
		t.Fatal(err)
	}
	ctx := tls.GetCommonTlsContext()
	sds := ctx.GetTlsCertificateSdsSecretConfigs()
	if len(sds) != 1 || !slices.Contains(ctx.GetAlpnProtocols(), "h2") || tls.GetSni() == "" {
		t.Fatalf("TLS context %v: want one client certificate, ALPN h2, SNI", &tls)
	}
	clientSecret, ok := strings.CutPrefix(sds[0].GetName(), "kubernetes://")
	if !ok || ctx.GetCombinedValidationContext().GetValidationContextSdsSecretConfig().GetName() != "kubernetes://"+clientSecret+"-cacert" {
		t.Errorf("SDS secrets %v: want kubernetes://<secret> and kubernetes://<secret>-cacert", &tls)
	}
	sans := ctx.GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
	if len(sans) == 0 || sans[0].GetMatcher().GetExact() != tls.GetSni() {
		t.Errorf("the cluster checks no subject name, or not the SNI %q", tls.GetSni())
	}
	for _, cert := range r.certs {
		if slices.Contains(cert.Spec.Usages, "server auth") && !slices.Contains(cert.Spec.DNSNames, tls.GetSni()) {
			t.Errorf("Envoy checks %q, proxysession's certificate names %v", tls.GetSni(), cert.Spec.DNSNames)
		}
		if !slices.Contains(cert.Spec.Usages, "server auth") && (cert.Metadata.Namespace != r.envoyFilter.Namespace || cert.Spec.SecretName != clientSecret || !slices.Contains(cert.Spec.Usages, "client auth")) {
			t.Errorf("client Certificate %+v: Envoy reads Secret %q", cert.Spec, clientSecret)
		}
	}
	if len(r.certs) > 0 && len(r.certs) != 2 {
		t.Errorf("%d Certificates: want proxysession's and Envoy's", len(r.certs))
	}
}

// checkDrainArithmetic: a pod going away keeps serving until Envoy has
// stopped sending it streams: health checks fail it after interval ×
// unhealthy threshold, and DNS drops it at the next refresh.
func checkDrainArithmetic(t *testing.T, c *clusterv3.Cluster, cfg *config.Config) {
	t.Helper()
	hc := c.GetHealthChecks()[0]
	detect := hc.GetInterval().AsDuration()*time.Duration(hc.GetUnhealthyThreshold().GetValue()) + dnsRefresh(c)
	if cfg.DrainDelay <= detect {
		t.Errorf("drain delay %v: not longer than health-check interval × unhealthy threshold + DNS refresh (%v)", cfg.DrainDelay, detect)
	}
}

// dnsRefresh is Envoy's DNS refresh interval of a cluster: its default,
// since checkServiceCluster keeps the deprecated dns_refresh_rate unset.
func dnsRefresh(c *clusterv3.Cluster) time.Duration {
	return 5 * time.Second
}

// checkForwardRulesExact: the filter sends proxysession exactly the
// headers it reads (processor.ForwardedHeaders), as exact matches.
func checkForwardRulesExact(t *testing.T, where string, ep *extprocv3.ExternalProcessor) {
	t.Helper()
	var got []string
	for _, p := range ep.GetForwardRules().GetAllowedHeaders().GetPatterns() {
		if p.GetExact() == "" || p.GetIgnoreCase() {
			t.Errorf("%s: forward_rules pattern %v: want exact, case-sensitive names", where, p)
		}
		got = append(got, p.GetExact())
	}
	want := processor.ForwardedHeaders()
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s: forward_rules allow %q; proxysession reads %q", where, got, want)
	}
	if ep.GetForwardRules().GetDisallowedHeaders() != nil {
		t.Errorf("%s: disallowed_headers on top of the allowed list", where)
	}
}

// checkExtensionPolicy checks the Envoy Gateway policy against
// proxysession's Service and the needs of the ext_proc protocol.
func checkExtensionPolicy(t *testing.T, r *release) {
	t.Helper()
	p := r.eep
	if len(p.Spec.TargetRefs) == 0 && len(p.Spec.TargetSelectors) == 0 {
		t.Error("EnvoyExtensionPolicy targets nothing")
	}
	for _, ref := range p.Spec.TargetRefs {
		if ref.Group != gwapiv1.GroupName || (ref.Kind != "Gateway" && ref.Kind != "HTTPRoute") || ref.Name == "" {
			t.Errorf("targetRef %+v: want a Gateway or HTTPRoute", ref)
		}
	}
	if len(p.Spec.ExtProc) != 1 {
		t.Fatalf("%d extProc entries", len(p.Spec.ExtProc))
	}
	ep := p.Spec.ExtProc[0]
	if ep.FailOpen == nil || *ep.FailOpen {
		t.Error("failOpen must be false: backend cookies would reach browsers while proxysession is down")
	}
	if ep.ShadowMode != nil && *ep.ShadowMode {
		t.Error("shadowMode is observability_mode: Envoy ignores every reply")
	}
	pm := ep.ProcessingMode
	if pm == nil || pm.Request == nil || pm.Response == nil || pm.Request.Body != nil || pm.Response.Body != nil {
		t.Errorf("processingMode %+v: want request and response headers, no bodies", pm)
	}
	if ep.MessageTimeout == nil {
		t.Error("no messageTimeout")
	} else if d, err := time.ParseDuration(string(*ep.MessageTimeout)); err != nil || d <= 0 || d > time.Second {
		t.Errorf("messageTimeout %q: want at most 1s", *ep.MessageTimeout)
	}
	if len(ep.BackendRefs) != 1 {
		t.Fatalf("backendRefs %+v", ep.BackendRefs)
	}
	ref := ep.BackendRefs[0].BackendObjectReference
	svc := clusterIPService(t, r)
	ns := p.Namespace
	if ref.Namespace != nil {
		ns = string(*ref.Namespace)
	}
	if ref.Kind == nil || *ref.Kind != "Service" || string(ref.Name) != svc.Name || ns != svc.Namespace || ref.Port == nil || int32(*ref.Port) != 9002 {
		t.Errorf("backendRef %+v: want Service %s/%s port 9002", ref, svc.Namespace, svc.Name)
	}
	if ns != p.Namespace {
		var granted bool
		for _, g := range r.refGrants {
			for _, from := range g.Spec.From {
				for _, to := range g.Spec.To {
					if g.Namespace == ns && string(from.Namespace) == p.Namespace && from.Kind == "EnvoyExtensionPolicy" &&
						string(from.Group) == egv1a1.GroupName && to.Kind == "Service" && (to.Name == nil || string(*to.Name) == svc.Name) {
						granted = true
					}
				}
			}
		}
		if !granted {
			t.Errorf("the policy in %s calls a Service in %s without a ReferenceGrant", p.Namespace, ns)
		}
	}
	bs := ep.BackendSettings
	if bs == nil || bs.HealthCheck == nil || bs.HealthCheck.Active == nil || bs.HealthCheck.Active.Type != egv1a1.ActiveHealthCheckerTypeGRPC ||
		bs.HealthCheck.Active.GRPC == nil || bs.HealthCheck.Active.GRPC.Service == nil || *bs.HealthCheck.Active.GRPC.Service != processor.ServiceName {
		t.Errorf("backendSettings %+v: want gRPC health checks of %s", bs, processor.ServiceName)
	} else {
		interval, _ := time.ParseDuration(string(*bs.HealthCheck.Active.Interval))
		detect := interval * time.Duration(*bs.HealthCheck.Active.UnhealthyThreshold)
		if r.cfg.DrainDelay <= detect {
			t.Errorf("drain delay %v: not longer than Envoy Gateway's health checks take (%v)", r.cfg.DrainDelay, detect)
		}
	}
	if cb := bs.CircuitBreaker; cb == nil || cb.MaxParallelRequests == nil || *cb.MaxParallelRequests <= 1024 || cb.MaxPendingRequests == nil || *cb.MaxPendingRequests <= 1024 {
		t.Error("circuit breakers must allow more than the default 1024 requests (one stream per request in flight)")
	}
	if (r.cfg.TLSCert != "") != (r.backendTLS != nil) {
		t.Errorf("proxysession serves TLS: %v; BackendTLSPolicy: %v", r.cfg.TLSCert != "", r.backendTLS != nil)
	}
	if b := r.backendTLS; b != nil {
		if len(b.Spec.TargetRefs) != 1 || string(b.Spec.TargetRefs[0].Name) != svc.Name || b.Namespace != svc.Namespace ||
			len(b.Spec.Validation.CACertificateRefs) != 1 || b.Spec.Validation.Hostname == "" {
			t.Errorf("BackendTLSPolicy %+v", b.Spec)
		}
		for _, cert := range r.certs {
			if slices.Contains(cert.Spec.Usages, "server auth") && !slices.Contains(cert.Spec.DNSNames, string(b.Spec.Validation.Hostname)) {
				t.Errorf("Envoy Gateway checks %q, proxysession's certificate names %v", b.Spec.Validation.Hostname, cert.Spec.DNSNames)
			}
		}
	}
}

// checkMonitoring: the ServiceMonitor scrapes a port the Service has; the
// alerts name the Prometheus job of that Service.
func checkMonitoring(t *testing.T, r *release) {
	t.Helper()
	if sm := r.serviceMonitor; sm != nil {
		var found bool
		for _, s := range r.services {
			if !mapsEqual(sm.Spec.Selector.MatchLabels, s.Labels) {
				continue
			}
			for _, p := range s.Spec.Ports {
				for _, ep := range sm.Spec.Endpoints {
					if ep.Port == p.Name && p.Name == "admin" {
						found = true
					}
				}
			}
		}
		if !found {
			t.Error("the ServiceMonitor scrapes no admin port of a Service")
		}
	}
	if r.rule == nil {
		return
	}
	job := clusterIPService(t, r).Name
	var noTraffic bool
	for _, g := range r.rule.Spec.Groups {
		for _, rule := range g.Rules {
			expr := rule.Expr.String()
			if strings.Contains(expr, "proxysession_") && !strings.Contains(expr, `job="`+job+`"`) {
				t.Errorf("alert %s: %s does not select job %q", rule.Alert, expr, job)
			}
			if strings.Count(expr, "(") != strings.Count(expr, ")") {
				t.Errorf("alert %s: unbalanced %s", rule.Alert, expr)
			}
			if strings.HasPrefix(rule.Alert, "ProxysessionNoTraffic") {
				noTraffic = strings.Contains(expr, `proxysession_messages_total`) && strings.Contains(expr, "unless")
			}
		}
	}
	if !noTraffic && (r.envoyFilter != nil || r.eep != nil) {
		t.Error("no alert for a gateway with traffic while proxysession receives none (an integration that matches nothing)")
	}
	checkRuleExprs(t, r.rule, job)
	checkRulesCarried(t, r)
}

// checkPersistence: with a state file (store.memory.persistence) the
// sessions live on a ReadWriteOnce claim mounted where the file is, which
// one pod at a time writes; the kubelet leaves the file's mode alone
// (fsGroupChangePolicy OnRootMismatch: with Always it would make the file
// group-readable at each mount, and proxysession would refuse it), and the
// grace period leaves time to write it. Without a state file, no volume.
func checkPersistence(t *testing.T, r *release) {
	t.Helper()
	pod := r.deploy.Spec.Template.Spec
	isClaim := func(v corev1.Volume) bool { return v.PersistentVolumeClaim != nil }
	if r.cfg.StateFile == "" {
		if len(r.pvcs) > 0 || slices.ContainsFunc(pod.Volumes, isClaim) {
			t.Errorf("a PersistentVolumeClaim (%d) or claim volume without a state file", len(r.pvcs))
		}
		return
	}
	if r.cfg.Store != "memory" {
		t.Errorf("a state file with the %s store", r.cfg.Store)
	}
	dir := filepath.Dir(r.cfg.StateFile)
	var claim string
	for _, m := range pod.Containers[0].VolumeMounts {
		for _, v := range pod.Volumes {
			if m.MountPath == dir && !m.ReadOnly && m.SubPath == "" && v.Name == m.Name && v.PersistentVolumeClaim != nil && !v.PersistentVolumeClaim.ReadOnly {
				claim = v.PersistentVolumeClaim.ClaimName
			}
		}
	}
	if claim == "" {
		t.Fatalf("the state file %s is on no writable PersistentVolumeClaim: it would go with the pod", r.cfg.StateFile)
	}
	// The chart's claim, or (existingClaim) the user's.
	switch len(r.pvcs) {
	case 0:
	case 1:
		pvc := r.pvcs[0]
		if pvc.Name != claim || pvc.Namespace != r.deploy.Namespace {
			t.Errorf("the pod mounts claim %s, the chart creates %s/%s", claim, pvc.Namespace, pvc.Name)
		}
		if !slices.Equal(pvc.Spec.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}) {
			t.Errorf("claim access modes %v: want ReadWriteOnce (one pod's file)", pvc.Spec.AccessModes)
		}
		if size := pvc.Spec.Resources.Requests.Storage(); size.IsZero() {
			t.Error("the claim requests no storage")
		}
	default:
		t.Errorf("%d PersistentVolumeClaims", len(r.pvcs))
	}
	psc := pod.SecurityContext
	if psc == nil || psc.FSGroup == nil || psc.FSGroupChangePolicy == nil || *psc.FSGroupChangePolicy != corev1.FSGroupChangeOnRootMismatch {
		t.Errorf("pod securityContext %+v: want an fsGroup and fsGroupChangePolicy OnRootMismatch (Always makes the state file group-readable and proxysession refuses it)", psc)
	}
	// One writer: never two pods on the file (a second would overwrite
	// the first's sessions, and a ReadWriteOnce volume would keep the new
	// pod waiting for the old one's node anyway).
	if *r.deploy.Spec.Replicas != 1 || r.deploy.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("a state file with %d replicas and strategy %s", *r.deploy.Spec.Replicas, r.deploy.Spec.Strategy.Type)
	}
	// The file is written after the servers have stopped: the grace
	// period covers the drain, the streams, the admin server (5s) and
	// 10s of writing.
	tgp := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	if tgp < r.cfg.DrainDelay+r.cfg.ShutdownGrace+5*time.Second+10*time.Second {
		t.Errorf("terminationGracePeriodSeconds %v: no time left to write the state file after drain %v + grace %v + admin 5s", tgp, r.cfg.DrainDelay, r.cfg.ShutdownGrace)
	}
}

// otelSamplers are the OTEL_TRACES_SAMPLER values the Go SDK knows.
var otelSamplers = []string{"always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"}

// checkTracing: with PROXYSESSION_TRACING the OTEL_* environment is one
// proxysession accepts (tracing.go's exporter choice: otlp over
// http/protobuf or grpc) and the OpenTelemetry SDK reads without
// complaint; without it, no OTEL_* variable.
func checkTracing(t *testing.T, r *release) {
	t.Helper()
	var otelVars []string
	for k := range r.env {
		if strings.HasPrefix(k, "OTEL_") {
			otelVars = append(otelVars, k)
		}
	}
	if !r.cfg.Tracing {
		if len(otelVars) > 0 {
			t.Errorf("OTEL_* variables %v without PROXYSESSION_TRACING", otelVars)
		}
		return
	}
	u, err := url.Parse(r.env["OTEL_EXPORTER_OTLP_ENDPOINT"])
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		t.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT %q: want the collector's http(s)://host:port (the SDK's default is localhost)", r.env["OTEL_EXPORTER_OTLP_ENDPOINT"])
	}
	if p := r.env["OTEL_EXPORTER_OTLP_PROTOCOL"]; p != "http/protobuf" && p != "grpc" {
		t.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL %q: proxysession exports over http/protobuf or grpc", p)
	}
	if e, ok := r.env["OTEL_TRACES_EXPORTER"]; ok && e != "otlp" {
		t.Errorf("OTEL_TRACES_EXPORTER %q with tracing on", e)
	}
	if r.env["OTEL_SERVICE_NAME"] == "" {
		t.Error("no OTEL_SERVICE_NAME")
	}
	s := r.env["OTEL_TRACES_SAMPLER"]
	if !slices.Contains(otelSamplers, s) {
		t.Errorf("OTEL_TRACES_SAMPLER %q: not one of the SDK's %v", s, otelSamplers)
	}
	if arg, ok := r.env["OTEL_TRACES_SAMPLER_ARG"]; ok {
		if f, err := strconv.ParseFloat(arg, 64); err != nil || f < 0 || f > 1 {
			t.Errorf("OTEL_TRACES_SAMPLER_ARG %q: want a ratio between 0 and 1", arg)
		}
	}
	// The SDK itself: an unknown sampler or a bad ratio is reported to the
	// error handler (and replaced by a default), not returned.
	for _, err := range otelSDKErrors(t, r.env) {
		t.Errorf("the OpenTelemetry SDK rejects the chart's environment: %v", err)
	}
}

// otelSDKErrors builds a tracer provider with the sampler variables of
// env and returns what the SDK reported.
func otelSDKErrors(t *testing.T, env map[string]string) []error {
	t.Helper()
	for _, k := range []string{"OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"} {
		v, ok := env[k]
		t.Setenv(k, v)
		if !ok {
			os.Unsetenv(k)
		}
	}
	var mu sync.Mutex
	var errs []error
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, err)
	}))
	tp := sdktrace.NewTracerProvider()
	if err := tp.Shutdown(t.Context()); err != nil {
		t.Error(err)
	}
	mu.Lock()
	defer mu.Unlock()
	return slices.Clone(errs)
}

// checkDashboard: the dashboard ConfigMap is for Grafana's sidecar and
// holds the dashboard file unchanged.
func checkDashboard(t *testing.T, r *release) {
	t.Helper()
	cm := r.dashboard
	if cm == nil {
		return
	}
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap labels %v: the sidecar looks for grafana_dashboard: \"1\"", cm.Labels)
	}
	want, err := os.ReadFile(dashboardSource)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := cm.Data["proxysession.json"]
	if !ok || got != string(want) || !json.Valid([]byte(got)) {
		t.Errorf("the dashboard ConfigMap does not hold %s unchanged (keys %v)", dashboardSource, slices.Collect(maps.Keys(cm.Data)))
	}
}

var promqlParser = parser.NewParser(parser.Options{})

// checkRuleExprs parses every rule with Prometheus's parser and checks
// that every proxysession_* selector is narrowed to the release's job.
func checkRuleExprs(t *testing.T, rule *monitoringv1.PrometheusRule, job string) {
	t.Helper()
	for _, g := range rule.Spec.Groups {
		for _, rl := range g.Rules {
			e, err := promqlParser.ParseExpr(rl.Expr.String())
			if err != nil {
				t.Errorf("alert %s: %v", rl.Alert, err)
				continue
			}
			parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
				vs, ok := n.(*parser.VectorSelector)
				if !ok || !strings.HasPrefix(vs.Name, "proxysession_") {
					return nil
				}
				if !slices.ContainsFunc(vs.LabelMatchers, func(m *labels.Matcher) bool {
					return m.Name == "job" && m.Type == labels.MatchEqual && m.Value == job
				}) {
					t.Errorf("alert %s: %s does not select job %q", rl.Alert, vs, job)
				}
				return nil
			})
		}
	}
}

// alertRules is a Prometheus rules file.
type alertRules struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Expr        string            `json:"expr"`
			For         string            `json:"for,omitempty"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

func readAlertRules(t *testing.T) alertRules {
	t.Helper()
	b, err := os.ReadFile(alertsSource)
	if err != nil {
		t.Fatal(err)
	}
	var rules alertRules
	if err := yaml.UnmarshalStrict(b, &rules); err != nil {
		t.Fatalf("%s: %v", alertsSource, err)
	}
	if len(rules.Groups) == 0 {
		t.Fatalf("%s: no groups", alertsSource)
	}
	return rules
}

// withoutJob parses expr and prints it without the job matchers of its
// proxysession_* selectors.
func withoutJob(t *testing.T, expr, job string) string {
	t.Helper()
	e, err := promqlParser.ParseExpr(expr)
	if err != nil {
		t.Errorf("%q: %v", expr, err)
		return ""
	}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok && strings.HasPrefix(vs.Name, "proxysession_") {
			vs.LabelMatchers = slices.DeleteFunc(vs.LabelMatchers, func(m *labels.Matcher) bool {
				return m.Name == "job" && m.Type == labels.MatchEqual && m.Value == job
			})
		}
		return nil
	})
	return e.String()
}

// checkRulesCarried: the PrometheusRule carries every alert of
// observability/prometheus/alerts.yaml, each the same but for the job of
// the release; of the no-traffic alerts (one per kind of proxy) the one
// of the integration's proxies (Istio's for the Istio modes, Envoy's for
// Envoy Gateway and for your own Envoy), on the chart's gateway rate.
func checkRulesCarried(t *testing.T, r *release) {
	t.Helper()
	job := clusterIPService(t, r).Name
	kind := "Envoy"
	if r.envoyFilter != nil {
		kind = "Istio"
	}
	rendered := map[string]monitoringv1.Rule{}
	groups := map[string]bool{}
	for _, g := range r.rule.Spec.Groups {
		groups[g.Name] = true
		for _, rl := range g.Rules {
			if _, dup := rendered[rl.Alert]; dup {
				t.Errorf("alert %s twice", rl.Alert)
			}
			rendered[rl.Alert] = rl
		}
	}
	for _, g := range readAlertRules(t).Groups {
		if !groups[g.Name] {
			t.Errorf("no rule group %q", g.Name)
		}
		for _, src := range g.Rules {
			noTraffic := strings.HasPrefix(src.Alert, "ProxysessionNoTraffic")
			want := !noTraffic || src.Alert == "ProxysessionNoTraffic"+kind
			got, ok := rendered[src.Alert]
			if ok != want {
				t.Errorf("alert %s of %s: rendered %v, want %v", src.Alert, alertsSource, ok, want)
			}
			if !ok {
				continue
			}
			gotFor := ""
			if got.For != nil {
				gotFor = string(*got.For)
			}
			if gotFor != src.For || !maps.Equal(got.Labels, src.Labels) || got.Annotations["summary"] != src.Annotations["summary"] {
				t.Errorf("alert %s: for %q, labels %v, summary %q; %s has %q, %v, %q", src.Alert, gotFor, got.Labels, got.Annotations["summary"], alertsSource, src.For, src.Labels, src.Annotations["summary"])
			}
			if !noTraffic {
				if g, w := withoutJob(t, got.Expr.String(), job), withoutJob(t, src.Expr, ""); g != w {
					t.Errorf("alert %s: %s\nis not %s of %s on job %q", src.Alert, got.Expr.String(), w, alertsSource, job)
				}
				if !maps.Equal(got.Annotations, src.Annotations) {
					t.Errorf("alert %s: annotations differ from %s", src.Alert, alertsSource)
				}
			}
		}
	}
}

// TestChartObservabilityCopies: .Files.Get reads only inside the chart, so
// the chart carries copies of the dashboard and the alert rules; they must
// stay equal to observability/'s, byte for byte.
func TestChartObservabilityCopies(t *testing.T) {
	for cp, src := range map[string]string{dashboardCopy: dashboardSource, alertsCopy: alertsSource} {
		a, err := os.ReadFile(cp)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs from %s: cp %s %s", cp, src, src, cp)
		}
	}
}

// TestChartAlerts: the integrations between them render every alert of
// observability/prometheus/alerts.yaml (each render all but the other
// kind of proxy's no-traffic alert: checkRulesCarried), and the
// dashboard, when asked for.
func TestChartAlerts(t *testing.T) {
	seen := map[string]bool{}
	for _, mode := range []string{"istio-gateway", "istio-sidecar", "envoy-gateway", "none"} {
		ms, err := render(t, map[string]any{
			"integration": map[string]any{"mode": mode,
				"istioSidecar": map[string]any{"namespace": "demo", "selector": map[string]any{"app": "demo"}}},
			"metrics":    map[string]any{"prometheusRule": map[string]any{"enabled": true}},
			"dashboards": map[string]any{"enabled": true, "namespace": "monitoring", "labels": map[string]any{"team": "edge"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		r := checkRelease(t, ms)
		if r.rule == nil || r.dashboard == nil {
			t.Fatalf("%s: PrometheusRule %v, dashboard %v", mode, r.rule != nil, r.dashboard != nil)
		}
		if r.dashboard.Namespace != "monitoring" || r.dashboard.Labels["team"] != "edge" {
			t.Errorf("dashboard ConfigMap %s/%s, labels %v: want dashboards.namespace and .labels", r.dashboard.Namespace, r.dashboard.Name, r.dashboard.Labels)
		}
		for _, g := range r.rule.Spec.Groups {
			for _, rl := range g.Rules {
				seen[rl.Alert] = true
			}
		}
	}
	for _, g := range readAlertRules(t).Groups {
		for _, rl := range g.Rules {
			if !seen[rl.Alert] {
				t.Errorf("alert %s of %s: in no integration's PrometheusRule", rl.Alert, alertsSource)
			}
		}
	}
	// Off by default.
	ms, err := render(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := checkRelease(t, ms); r.rule != nil || r.dashboard != nil {
		t.Error("the defaults render a PrometheusRule or a dashboard (they need the Prometheus Operator and Grafana's sidecar)")
	}
}

// TestChartPersistence: the memory store keeps its sessions on a claim by
// default; the claim's class, size and the write interval come from the
// values; redis, or persistence off, gives no claim and no state file.
func TestChartPersistence(t *testing.T) {
	persistence := func(p map[string]any) map[string]any {
		return map[string]any{"store": map[string]any{"memory": map[string]any{"persistence": p}}}
	}
	empty := ""
	for name, tc := range map[string]struct {
		vals      map[string]any
		claim     string  // the claim mounted; "" none
		pvc       bool    // the chart creates it
		class     *string // its storageClassName
		size      string
		interval  time.Duration
		stateFile bool
	}{
		"defaults":                  {nil, "proxysession-state", true, nil, "1Gi", time.Minute, true},
		"a class, a size, 0":        {persistence(map[string]any{"storageClassName": "fast", "size": "5Gi", "interval": "0"}), "proxysession-state", true, ptr("fast"), "5Gi", 0, true},
		"no dynamic provisioning":   {persistence(map[string]any{"storageClassName": "-", "interval": "30s"}), "proxysession-state", true, &empty, "1Gi", 30 * time.Second, true},
		"an existing claim":         {persistence(map[string]any{"existingClaim": "sessions"}), "sessions", false, nil, "", time.Minute, true},
		"off":                       {persistence(map[string]any{"enabled": false}), "", false, nil, "", 0, false},
		"fsGroupChangePolicy unset": {map[string]any{"podSecurityContext": map[string]any{"fsGroupChangePolicy": nil}}, "proxysession-state", true, nil, "1Gi", time.Minute, true},
		"redis": {map[string]any{"store": map[string]any{"type": "redis", "redis": map[string]any{"addr": "redis:6379"},
			"memory": map[string]any{"persistence": map[string]any{"enabled": true}}}}, "", false, nil, "", 0, false},
	} {
		t.Run(name, func(t *testing.T) {
			ms, err := render(t, tc.vals)
			if err != nil {
				t.Fatal(err)
			}
			r := checkRelease(t, ms)
			if (r.cfg.StateFile != "") != tc.stateFile || (tc.stateFile && r.cfg.StateInterval != tc.interval) {
				t.Errorf("state file %q every %v: want a file %v every %v", r.cfg.StateFile, r.cfg.StateInterval, tc.stateFile, tc.interval)
			}
			if tc.stateFile && r.cfg.StateFile != "/var/lib/proxysession/sessions.state" {
				t.Errorf("state file %s: want it in the image's /var/lib/proxysession", r.cfg.StateFile)
			}
			var claim string
			for _, v := range r.deploy.Spec.Template.Spec.Volumes {
				if v.PersistentVolumeClaim != nil {
					claim = v.PersistentVolumeClaim.ClaimName
				}
			}
			if claim != tc.claim || (len(r.pvcs) == 1) != tc.pvc {
				t.Fatalf("mounts claim %q, %d claims: want %q, created %v", claim, len(r.pvcs), tc.claim, tc.pvc)
			}
			if !tc.pvc {
				return
			}
			pvc := r.pvcs[0]
			if !equalPtr(pvc.Spec.StorageClassName, tc.class) || pvc.Spec.Resources.Requests.Storage().String() != tc.size {
				t.Errorf("claim class %v, size %v: want %v, %s", pvc.Spec.StorageClassName, pvc.Spec.Resources.Requests.Storage(), tc.class, tc.size)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func equalPtr[T comparable](a, b *T) bool {
	return a == b || a != nil && b != nil && *a == *b
}

// TestChartTracing: the ci file that turns tracing on sets exactly its
// values, and every sampler the schema offers is one the SDK accepts.
func TestChartTracing(t *testing.T) {
	vals := readValues(t, filepath.Join(chartDir, "ci", "memory-envoy-gateway-observability-values.yaml"))
	ms, err := render(t, vals)
	if err != nil {
		t.Fatal(err)
	}
	r := checkRelease(t, ms)
	tr := vals["tracing"].(map[string]any)
	if !r.cfg.Tracing || r.env["OTEL_EXPORTER_OTLP_ENDPOINT"] != tr["endpoint"] || r.env["OTEL_EXPORTER_OTLP_PROTOCOL"] != tr["protocol"] ||
		r.env["OTEL_TRACES_SAMPLER"] != tr["sampler"] || r.env["OTEL_TRACES_SAMPLER_ARG"] != fmt.Sprint(tr["samplerArg"]) || r.env["OTEL_SERVICE_NAME"] != "proxysession" {
		t.Errorf("tracing %v, environment %v: want the ci file's %v", r.cfg.Tracing, r.env, tr)
	}

	var schema struct {
		Properties struct {
			Tracing struct {
				Properties struct {
					Sampler struct {
						Enum []string `json:"enum"`
					} `json:"sampler"`
				} `json:"properties"`
			} `json:"tracing"`
		} `json:"properties"`
	}
	b, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &schema); err != nil {
		t.Fatal(err)
	}
	samplers := schema.Properties.Tracing.Properties.Sampler.Enum
	if !slices.Equal(samplers, otelSamplers) {
		t.Errorf("the schema's samplers %v, the SDK's %v", samplers, otelSamplers)
	}
	for _, s := range samplers {
		ms, err := render(t, map[string]any{"tracing": map[string]any{"enabled": true, "endpoint": "http://otel-collector.observability:4317", "protocol": "grpc", "sampler": s}})
		if err != nil {
			t.Fatalf("sampler %s: %v", s, err)
		}
		if r := checkRelease(t, ms); r.env["OTEL_TRACES_SAMPLER"] != s {
			t.Errorf("sampler %s: OTEL_TRACES_SAMPLER %q", s, r.env["OTEL_TRACES_SAMPLER"])
		}
	}
	// A ratio of 0 given as a number (helm --set) is kept, not dropped
	// (the SDK would sample everything without it).
	for _, arg := range []any{0, 0.25, "0"} {
		ms, err := render(t, map[string]any{"tracing": map[string]any{"enabled": true, "endpoint": "https://otel.example:4318", "samplerArg": arg}})
		if err != nil {
			t.Fatalf("samplerArg %v: %v", arg, err)
		}
		if r := checkRelease(t, ms); r.env["OTEL_TRACES_SAMPLER_ARG"] != fmt.Sprint(arg) {
			t.Errorf("samplerArg %v: OTEL_TRACES_SAMPLER_ARG %q", arg, r.env["OTEL_TRACES_SAMPLER_ARG"])
		}
	}
	// The SDK check catches what the chart cannot know.
	if errs := otelSDKErrors(t, map[string]string{"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}); len(errs) == 0 {
		t.Error("the SDK check accepts a ratio of 1.5")
	}
}
