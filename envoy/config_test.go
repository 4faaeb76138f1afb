// Package envoy_test checks the deployment files of this directory and of
// the repository root with the parsers and validators of the projects they
// belong to: Envoy's API (go-control-plane's generated ValidateAll, with
// every typed_config unpacked and validated too), Istio's EnvoyFilter API,
// Kubernetes' API types (strict decoding), and the compose-spec loader. It
// also checks that the files agree with each other and with proxysession's
// own defaults and flag parser.
package envoy_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/proxysession/proxysession/internal/config"
	"github.com/proxysession/proxysession/processor"
	"github.com/proxysession/proxysession/sessions"
)

// requiredHeaders are the headers proxysession reads; forward_rules must
// let every one of them through.
var requiredHeaders = processor.ForwardedHeaders()

// grpcPort is proxysession's default ext_proc port.
func grpcPort(t *testing.T) uint32 {
	t.Helper()
	_, port, err := net.SplitHostPort(config.DefaultGRPCAddr)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return uint32(p)
}

func readYAMLAsJSON(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return j
}

// unmarshal decodes JSON into an Envoy message strictly: unknown fields
// and unresolvable @type URLs are errors.
func unmarshal(t *testing.T, what string, j []byte, m proto.Message) {
	t.Helper()
	if err := (protojson.UnmarshalOptions{}).Unmarshal(j, m); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// validateDeep runs ValidateAll on m and on every message packed in an Any
// inside it (generated validation stops at Any fields).
func validateDeep(t *testing.T, what string, m proto.Message) {
	t.Helper()
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
	var walk func(protoreflect.Message)
	walk = func(msg protoreflect.Message) {
		if a, ok := msg.Interface().(*anypb.Any); ok {
			inner, err := a.UnmarshalNew()
			if err != nil {
				t.Errorf("%s: typed_config %s: %v", what, a.GetTypeUrl(), err)
				return
			}
			validateDeep(t, what+" "+a.GetTypeUrl(), inner)
			return
		}
		msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Message() != nil:
				for i := 0; i < v.List().Len(); i++ {
					walk(v.List().Get(i).Message())
				}
			case fd.IsMap() && fd.MapValue().Message() != nil:
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					walk(mv.Message())
					return true
				})
			case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
				walk(v.Message())
			}
			return true
		})
	}
	walk(m.ProtoReflect())
}

func loadBootstrap(t *testing.T, path string) *bootstrapv3.Bootstrap {
	t.Helper()
	var bs bootstrapv3.Bootstrap
	unmarshal(t, path, readYAMLAsJSON(t, path), &bs)
	validateDeep(t, path, &bs)
	return &bs
}

func findCluster(t *testing.T, bs *bootstrapv3.Bootstrap, name string) *clusterv3.Cluster {
	t.Helper()
	for _, c := range bs.GetStaticResources().GetClusters() {
		if c.GetName() == name {
			return c
		}
	}
	t.Fatalf("no cluster %q", name)
	return nil
}

// httpFilters returns the HTTP filters of the listener's connection manager.
func httpFilters(t *testing.T, l *listenerv3.Listener) []*hcmv3.HttpFilter {
	t.Helper()
	return connectionManager(t, l).GetHttpFilters()
}

// connectionManager returns the listener's http_connection_manager.
func connectionManager(t *testing.T, l *listenerv3.Listener) *hcmv3.HttpConnectionManager {
	t.Helper()
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			var hcm hcmv3.HttpConnectionManager
			if f.GetTypedConfig().MessageIs(&hcm) {
				if err := f.GetTypedConfig().UnmarshalTo(&hcm); err != nil {
					t.Fatal(err)
				}
				return &hcm
			}
		}
	}
	t.Fatalf("listener %s has no http_connection_manager", l.GetName())
	return nil
}

// checkFilterChain checks that ext_proc comes before the router, and
// returns its configuration.
func checkFilterChain(t *testing.T, filters []*hcmv3.HttpFilter) *extprocv3.ExternalProcessor {
	t.Helper()
	extIdx, routerIdx := -1, -1
	for i, f := range filters {
		switch f.GetName() {
		case "envoy.filters.http.ext_proc":
			extIdx = i
		case "envoy.filters.http.router":
			routerIdx = i
		}
	}
	if extIdx < 0 || routerIdx < 0 || extIdx > routerIdx || routerIdx != len(filters)-1 {
		t.Fatalf("filters %v: want ext_proc before the router, the router last", filters)
	}
	var ep extprocv3.ExternalProcessor
	if err := filters[extIdx].GetTypedConfig().UnmarshalTo(&ep); err != nil {
		t.Fatal(err)
	}
	return &ep
}

// checkExtProc checks the ext_proc filter settings proxysession needs.
func checkExtProc(t *testing.T, where string, ep *extprocv3.ExternalProcessor) {
	t.Helper()
	pm := ep.GetProcessingMode()
	if pm.GetRequestHeaderMode().String() != "SEND" || pm.GetResponseHeaderMode().String() != "SEND" ||
		pm.GetRequestBodyMode().String() != "NONE" || pm.GetResponseBodyMode().String() != "NONE" ||
		pm.GetRequestTrailerMode().String() != "SKIP" || pm.GetResponseTrailerMode().String() != "SKIP" {
		t.Errorf("%s: processing mode %v, want headers SEND, bodies NONE, trailers SKIP", where, pm)
	}
	if ep.GetFailureModeAllow() {
		t.Errorf("%s: failure_mode_allow must be false (fail closed)", where)
	}
	if ep.GetObservabilityMode() {
		t.Errorf("%s: observability_mode makes Envoy ignore every reply", where)
	}
	if mt := ep.GetMessageTimeout(); mt == nil || mt.AsDuration() <= 0 || mt.AsDuration() > time.Second {
		t.Errorf("%s: message_timeout %v: want an explicit timeout of at most 1s", where, mt)
	}
	if got := ep.GetGrpcService().GetEnvoyGrpc().GetClusterName(); got != "proxysession" {
		t.Errorf("%s: ext_proc calls cluster %q, want proxysession", where, got)
	}
	if fr := ep.GetForwardRules(); fr != nil {
		for _, h := range requiredHeaders {
			if !matchesAny(fr.GetAllowedHeaders().GetPatterns(), h) {
				t.Errorf("%s: forward_rules do not allow %q, which proxysession reads", where, h)
			}
			if matchesAny(fr.GetDisallowedHeaders().GetPatterns(), h) {
				t.Errorf("%s: forward_rules disallow %q, which proxysession reads", where, h)
			}
		}
	}
}

// matchesAny reports whether a StringMatcher list matches header, as
// Envoy's forward_rules match header keys.
func matchesAny(patterns []*matcherv3.StringMatcher, header string) bool {
	for _, m := range patterns {
		h, fold := header, m.GetIgnoreCase()
		eq := func(a, b string) bool { return a == b || fold && strings.EqualFold(a, b) }
		switch p := m.GetMatchPattern().(type) {
		case *matcherv3.StringMatcher_Exact:
			if eq(h, p.Exact) {
				return true
			}
		case *matcherv3.StringMatcher_Prefix:
			if len(h) >= len(p.Prefix) && eq(h[:len(p.Prefix)], p.Prefix) {
				return true
			}
		case *matcherv3.StringMatcher_Suffix:
			if len(h) >= len(p.Suffix) && eq(h[len(h)-len(p.Suffix):], p.Suffix) {
				return true
			}
		case *matcherv3.StringMatcher_Contains:
			if strings.Contains(h, p.Contains) || fold && strings.Contains(strings.ToLower(h), strings.ToLower(p.Contains)) {
				return true
			}
		case *matcherv3.StringMatcher_SafeRegex:
			if regexp.MustCompile("^(?:" + p.SafeRegex.GetRegex() + ")$").MatchString(h) {
				return true
			}
		}
	}
	return false
}

// checkServiceCluster checks the cluster Envoy reaches proxysession by.
func checkServiceCluster(t *testing.T, where string, c *clusterv3.Cluster, wantHost string, wantPort uint32) {
	t.Helper()
	if c.GetName() != "proxysession" {
		t.Errorf("%s: cluster name %q", where, c.GetName())
	}
	if ct := c.GetConnectTimeout().AsDuration(); ct <= 0 || ct > time.Second {
		t.Errorf("%s: connect_timeout %v, want a short explicit one", where, ct)
	}
	opts, ok := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
	var hpo httpv3.HttpProtocolOptions
	if !ok || opts.UnmarshalTo(&hpo) != nil || hpo.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Errorf("%s: the cluster must speak HTTP/2 (explicit_http_config.http2_protocol_options): ext_proc is gRPC", where)
	}
	if ka := hpo.GetExplicitHttpConfig().GetHttp2ProtocolOptions().GetConnectionKeepalive(); ka != nil && ka.GetInterval().AsDuration() < 10*time.Second {
		t.Errorf("%s: keepalive interval %v: proxysession closes connections that ping more often than every 10s", where, ka.GetInterval().AsDuration())
	}
	var raised bool
	for _, th := range c.GetCircuitBreakers().GetThresholds() {
		if th.GetPriority() == corev3.RoutingPriority_DEFAULT && th.GetMaxRequests().GetValue() > 1024 && th.GetMaxPendingRequests().GetValue() > 1024 {
			raised = true
		}
	}
	if !raised {
		t.Errorf("%s: circuit breakers must allow more than the default 1024 requests (one stream per request in flight)", where)
	}
	if c.ProtoReflect().Has(c.ProtoReflect().Descriptor().Fields().ByName("dns_refresh_rate")) {
		t.Errorf("%s: dns_refresh_rate is deprecated (Envoy 1.40); the default of 5s is what the drain delay assumes", where)
	}
	var grpcHealth bool
	for _, hc := range c.GetHealthChecks() {
		if hc.GetGrpcHealthCheck().GetServiceName() == processor.ServiceName {
			grpcHealth = true
		}
	}
	if !grpcHealth {
		t.Errorf("%s: no gRPC health check of %s", where, processor.ServiceName)
	}
	eps := c.GetLoadAssignment().GetEndpoints()
	if len(eps) != 1 || len(eps[0].GetLbEndpoints()) != 1 {
		t.Fatalf("%s: want one endpoint, got %v", where, eps)
	}
	addr := eps[0].GetLbEndpoints()[0].GetEndpoint().GetAddress()
	if wantPort == 0 {
		if got := addr.GetPipe().GetPath(); got != wantHost {
			t.Errorf("%s: socket %q, want %q", where, got, wantHost)
		}
		return
	}
	if sa := addr.GetSocketAddress(); sa.GetAddress() != wantHost || sa.GetPortValue() != wantPort {
		t.Errorf("%s: proxysession at %s:%d, want %s:%d", where, sa.GetAddress(), sa.GetPortValue(), wantHost, wantPort)
	}
}

func TestEnvoyConfig(t *testing.T) {
	bs := loadBootstrap(t, "envoy.yaml")
	listeners := bs.GetStaticResources().GetListeners()
	if len(listeners) != 1 || listeners[0].GetAddress().GetSocketAddress().GetPortValue() != 8080 {
		t.Fatalf("want one listener on :8080, got %v", listeners)
	}
	ep := checkFilterChain(t, httpFilters(t, listeners[0]))
	checkExtProc(t, "envoy.yaml", ep)
	if ep.GetForwardRules() == nil {
		t.Error("envoy.yaml: no forward_rules: Envoy would send proxysession every header")
	}
	checkForwardRulesExact(t, "envoy.yaml", ep)
	// An edge listener: Envoy must not trust the client's own
	// X-Forwarded-Proto/X-Forwarded-For.
	hcm := connectionManager(t, listeners[0])
	if !hcm.GetUseRemoteAddress().GetValue() || hcm.GetXffNumTrustedHops() != 0 {
		t.Errorf("envoy.yaml: use_remote_address %v, xff_num_trusted_hops %d: an edge listener must use the peer's address and trust no client hop",
			hcm.GetUseRemoteAddress().GetValue(), hcm.GetXffNumTrustedHops())
	}
	// The admin interface (/quitquitquit, runtime changes) on loopback only.
	if a := bs.GetAdmin().GetAddress().GetSocketAddress().GetAddress(); a != "127.0.0.1" && a != "::1" {
		t.Errorf("envoy.yaml: admin on %q: bind it to loopback", a)
	}
	// Every ready replica is a host: STRICT_DNS on a name that resolves
	// to each of them, refreshed quickly.
	if c := findCluster(t, bs, "proxysession"); c.GetType() != clusterv3.Cluster_STRICT_DNS || dnsRefresh(c) > 5*time.Second {
		t.Errorf("envoy.yaml: proxysession cluster %v, DNS refresh %v", c.GetType(), dnsRefresh(c))
	}
	checkServiceCluster(t, "envoy.yaml", findCluster(t, bs, "proxysession"), "proxysession", grpcPort(t))
	demo := findCluster(t, bs, "demo").GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if demo.GetAddress() != "demo" || demo.GetPortValue() != 8081 {
		t.Errorf("demo cluster at %s:%d, want demo:8081", demo.GetAddress(), demo.GetPortValue())
	}
}

// TestClusterVariants checks the mTLS and Unix-socket clusters alone and
// as replacements of the cluster in envoy.yaml.
func TestClusterVariants(t *testing.T) {
	for _, tc := range []struct {
		file, host string
		port       uint32
		check      func(t *testing.T, c *clusterv3.Cluster)
	}{
		{"clusters/proxysession-mtls.yaml", "proxysession", grpcPort(t), func(t *testing.T, c *clusterv3.Cluster) {
			var tls tlsv3.UpstreamTlsContext
			if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(&tls); err != nil {
				t.Fatal(err)
			}
			ctx := tls.GetCommonTlsContext()
			if len(ctx.GetTlsCertificates()) != 1 || ctx.GetValidationContext().GetTrustedCa() == nil || !slices.Contains(ctx.GetAlpnProtocols(), "h2") || tls.GetSni() == "" {
				t.Errorf("mTLS context %v: want a client certificate, a trusted CA, SNI and ALPN h2", &tls)
			}
		}},
		{"clusters/proxysession-uds.yaml", "/run/proxysession/proxysession.sock", 0, func(t *testing.T, c *clusterv3.Cluster) {
			path := config.SocketPath("unix://" + "/run/proxysession/proxysession.sock")
			if _, err := config.Parse([]string{"-grpc-addr", "unix://" + path}, noEnv, nil); err != nil {
				t.Errorf("proxysession rejects the documented socket address: %v", err)
			}
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			var c clusterv3.Cluster
			unmarshal(t, tc.file, readYAMLAsJSON(t, tc.file), &c)
			validateDeep(t, tc.file, &c)
			checkServiceCluster(t, tc.file, &c, tc.host, tc.port)
			tc.check(t, &c)

			bs := loadBootstrap(t, "envoy.yaml")
			clusters := bs.GetStaticResources().GetClusters()
			for i := range clusters {
				if clusters[i].GetName() == "proxysession" {
					clusters[i] = &c
				}
			}
			validateDeep(t, "envoy.yaml with "+tc.file, bs)
		})
	}
}

func noEnv(string) (string, bool) { return "", false }

// manifest is one Kubernetes object of a multi-document YAML file.
type manifest struct {
	kind, name, namespace string
	json                  []byte
}

// parseManifests splits a multi-document YAML stream into its objects
// (documents of comments only are skipped).
func parseManifests(t *testing.T, what string, b []byte) []manifest {
	t.Helper()
	var out []manifest
	for _, doc := range bytes.Split(append([]byte("\n"), b...), []byte("\n---")) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if string(j) == "null" {
			continue
		}
		var head struct {
			APIVersion string            `json:"apiVersion"`
			Kind       string            `json:"kind"`
			Metadata   metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(j, &head); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		out = append(out, manifest{kind: head.APIVersion + "/" + head.Kind, name: head.Metadata.Name, namespace: head.Metadata.Namespace, json: j})
	}
	return out
}

// strict decodes a manifest into its API type, rejecting unknown fields.
func strict(t *testing.T, m manifest, obj any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(m.json, obj); err != nil {
		t.Fatalf("%s %s: %v", m.kind, m.name, err)
	}
}

// checkDeployment checks proxysession's hardened Deployment and returns
// the configuration its environment gives proxysession's own parser
// (secret values are not resolved), and its container ports by name.
func checkDeployment(t *testing.T, path string, deploy *appsv1.Deployment) (*config.Config, map[string]int32) {
	t.Helper()
	pod := deploy.Spec.Template.Spec
	if psc := pod.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod securityContext %+v: want runAsNonRoot and seccomp RuntimeDefault", path, psc)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%s: %d containers", path, len(pod.Containers))
	}
	c := pod.Containers[0]
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil ||
		!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("%s: container securityContext %+v: want a read-only root, no privilege escalation, drop ALL", path, sc)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Errorf("%s: resources %+v: want cpu and memory requests", path, c.Resources)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = e.Value
		}
	}
	cfg, err := config.Parse(nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, nil)
	if err != nil {
		t.Fatalf("%s: the Deployment's environment is invalid for proxysession: %v", path, err)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if want := portOf(t, cfg.GRPCAddr); ports["grpc"] != want {
		t.Errorf("%s: container port grpc = %d, proxysession listens on %d", path, ports["grpc"], want)
	}
	if want := portOf(t, cfg.AdminAddr); ports["admin"] != want {
		t.Errorf("%s: container port admin = %d, proxysession's admin is on %d", path, ports["admin"], want)
	}
	for probe, p := range map[*corev1.Probe]string{c.LivenessProbe: "/healthz", c.ReadinessProbe: "/readyz"} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != p || probe.HTTPGet.Port.String() != "admin" {
			t.Errorf("%s: probe %+v: want GET %s on the admin port", path, probe, p)
		}
	}
	if cfg.DrainDelay <= 0 {
		t.Errorf("%s: no drain delay: Envoy would see connections refused while the pod goes away", path)
	}
	if tgp := pod.TerminationGracePeriodSeconds; tgp == nil || time.Duration(*tgp)*time.Second <= cfg.DrainDelay+cfg.ShutdownGrace {
		t.Errorf("%s: terminationGracePeriodSeconds %v must exceed drain delay + shutdown grace (%v)", path, tgp, cfg.DrainDelay+cfg.ShutdownGrace)
	}
	if deploy.Spec.Template.Annotations["sidecar.istio.io/inject"] != "false" {
		t.Errorf("%s: proxysession's pod must not get a sidecar: Envoy reaches it through its own cluster", path)
	}
	return cfg, ports
}

func portOf(t *testing.T, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return int32(n)
}

func mapsEqual(a, b map[string]string) bool {
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return len(a) > 0
}

// jsonRaw keeps a JSON value as it is.
type jsonRaw []byte

func (j *jsonRaw) UnmarshalJSON(b []byte) error {
	*j = append((*j)[:0], b...)
	return nil
}

// TestExtProcConfigsAgree: envoy.yaml and the chart's EnvoyFilters (at
// the gateway and in sidecars, with and without TLS) configure the filter
// the same way, forward_rules included.
func TestExtProcConfigsAgree(t *testing.T) {
	bs := loadBootstrap(t, "envoy.yaml")
	base := checkFilterChain(t, httpFilters(t, bs.GetStaticResources().GetListeners()[0]))
	for name, c := range matrix() {
		if !strings.HasPrefix(name, "istio-") {
			continue
		}
		ms, err := render(t, c)
		if err != nil {
			t.Fatal(err)
		}
		r := checkRelease(t, ms)
		if !proto.Equal(r.extProc, base) {
			t.Errorf("%s configures ext_proc differently from envoy.yaml:\n%v\n%v", name, r.extProc, base)
		}
	}
}

func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root), cli.WithEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return p
}

func TestCompose(t *testing.T) {
	p := loadCompose(t)
	for _, name := range []string{"envoy", "proxysession", "demo"} {
		if _, ok := p.Services[name]; !ok {
			t.Fatalf("no service %q", name)
		}
	}

	envoy := p.Services["envoy"]
	image, tag, _ := strings.Cut(envoy.Image, ":")
	if image != "envoyproxy/envoy" || !envoyVersionAtLeast(tag, 1, 32) {
		t.Errorf("envoy image %q: want the official image pinned to v1.32 or newer (header values in raw_value)", envoy.Image)
	}
	// The image is the Envoy release go-control-plane's envoy module
	// (which validates envoy.yaml here) was generated from.
	if want := "v" + strings.TrimPrefix(goControlPlaneVersion(t), "v"); tag != want {
		t.Errorf("envoy image %q: want envoyproxy/envoy:%s, the release of the go-control-plane envoy module the configuration is validated with", envoy.Image, want)
	}
	var published bool
	for _, port := range envoy.Ports {
		if port.Target == 8080 && port.Published == "8080" {
			published = true
		}
		// Envoy's admin page must not be published beyond loopback.
		if port.Target == 9901 && port.HostIP != "127.0.0.1" {
			t.Errorf("envoy publishes its admin port %d on %q", port.Target, port.HostIP)
		}
	}
	if !published {
		t.Errorf("envoy does not publish 8080: %v", envoy.Ports)
	}
	var mounted string
	for _, v := range envoy.Volumes {
		if filepath.Base(v.Source) == "envoy.yaml" {
			mounted = v.Target
		}
	}
	if mounted == "" || !slices.Contains(envoy.Command, mounted) {
		t.Errorf("envoy runs %v but envoy.yaml is mounted at %q", envoy.Command, mounted)
	}

	// The proxysession service: the Dockerfile target, a health check
	// through the binary, and an environment its parser accepts, listening
	// where envoy.yaml's cluster points.
	ps := p.Services["proxysession"]
	if ps.Build == nil || ps.Build.Target != "proxysession" {
		t.Errorf("proxysession build %+v: want the Dockerfile's proxysession target", ps.Build)
	}
	if ps.HealthCheck == nil || !slices.Equal(ps.HealthCheck.Test, types.HealthCheckTest{"CMD", "/proxysession", "healthcheck"}) {
		t.Errorf("proxysession healthcheck %+v", ps.HealthCheck)
	}
	cfg, err := config.Parse(nil, containerLookup(ps), nil)
	if err != nil {
		t.Fatalf("the compose environment is invalid for proxysession: %v", err)
	}
	// "Log out everywhere" in the demo needs session binding, with the
	// demo-only key mounted read-only from the repository.
	if cfg.Sessions.BindingKey == nil {
		t.Error("the demo runs without -binding-key-file: its \"Log out everywhere\" would log out one browser only")
	}
	for _, v := range ps.Volumes {
		if v.Target == lookupOr(ps.Environment, "PROXYSESSION_BINDING_KEY_FILE", "") && (v.Type != types.VolumeTypeBind || !v.ReadOnly || filepath.Base(v.Source) != "demo-binding.key") {
			t.Errorf("the binding key is mounted as %+v: want the demo-only key, read-only", v)
		}
	}
	bs := loadBootstrap(t, "envoy.yaml")
	checkServiceCluster(t, "envoy.yaml vs compose", findCluster(t, bs, "proxysession"), "proxysession", uint32(portOf(t, cfg.GRPCAddr)))
	if !slices.Contains(cfg.Sessions.PassThrough, "XSRF-TOKEN") {
		t.Error("the demo's CSRF cookie is not on the pass-through list")
	}
	// Sessions survive a restart: the state file lives on a named volume.
	stateVolume := false
	for _, v := range ps.Volumes {
		if v.Type == types.VolumeTypeVolume && cfg.StateFile != "" && filepath.Dir(cfg.StateFile) == v.Target && !v.ReadOnly {
			_, stateVolume = p.Volumes[v.Source]
		}
	}
	if !stateVolume {
		t.Errorf("proxysession keeps its state file %q on no writable named volume (%+v)", cfg.StateFile, ps.Volumes)
	}
	if depends, ok := envoy.DependsOn["proxysession"]; !ok || depends.Condition != types.ServiceConditionHealthy {
		t.Errorf("envoy must wait for a healthy proxysession: %+v", envoy.DependsOn)
	}

	// The demo page names the session cookie proxysession really sets.
	demo := p.Services["demo"]
	cookieName := cfg.Sessions.CookieName
	if cookieName == "" {
		cookieName = sessions.DefaultCookieName
	}
	if got := lookupOr(demo.Environment, "DEMO_PROXY_COOKIE", ""); got != cookieName {
		t.Errorf("the demo names the session cookie %q, proxysession sets %q", got, cookieName)
	}
	if demo.Build == nil || demo.Build.Target != "demo" || lookupOr(demo.Environment, "DEMO_ADDR", "") != ":8081" {
		t.Errorf("demo service %+v", demo)
	}
}

// TestComposeSharedStore: with the redis profile and PROXYSESSION_STORE=redis,
// proxysession uses the redis service, with the password it runs with.
func TestComposeSharedStore(t *testing.T) {
	root, _ := filepath.Abs("..")
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")}, cli.WithWorkingDirectory(root),
		cli.WithEnv([]string{"PROXYSESSION_STORE=redis", "PROXYSESSION_STATE_FILE=", "PROXYSESSION_REPLICAS=3", "REDIS_PASSWORD=pw"}), cli.WithProfiles([]string{"redis"}))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ps, ok := p.Services["proxysession"]
	redisSvc, ok2 := p.Services["redis"]
	if !ok || !ok2 {
		t.Fatalf("services %v", p.ServiceNames())
	}
	cfg, err := config.Parse(nil, containerLookup(ps), nil)
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(cfg.Redis.Addrs[0])
	if cfg.Store != "redis" || host != "redis" || port != "6379" || cfg.Redis.Password != "pw" {
		t.Errorf("proxysession's store: %q at %v (password %q)", cfg.Store, cfg.Redis.Addrs, cfg.Redis.Password)
	}
	if !slices.Contains(redisSvc.Command, "pw") || lookupOr(redisSvc.Environment, "REDIS_PASSWORD", "") != "pw" {
		t.Errorf("redis runs %v", redisSvc.Command)
	}
	if ps.Deploy == nil || ps.Deploy.Replicas == nil || *ps.Deploy.Replicas != 3 {
		t.Errorf("replicas %+v", ps.Deploy)
	}
	if d, ok := ps.DependsOn["redis"]; !ok || d.Condition != types.ServiceConditionHealthy {
		t.Errorf("proxysession must wait for a healthy redis: %+v", ps.DependsOn)
	}
	// Without the profile, the redis service is not part of the project
	// and proxysession starts without it.
	if _, ok := loadCompose(t).Services["redis"]; ok {
		t.Error("redis runs without its profile")
	}
}

func lookup(env types.MappingWithEquals) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := env[k]
		if !ok || v == nil {
			return "", false
		}
		return *v, true
	}
}

// containerLookup is lookup of a service's environment, with values that
// name the target of one of its bind mounts (a file the container reads,
// like the binding key) replaced by the mount's source on this machine,
// so that the parser, which reads such files, finds them.
func containerLookup(svc types.ServiceConfig) func(string) (string, bool) {
	env := lookup(svc.Environment)
	return func(k string) (string, bool) {
		v, ok := env(k)
		for _, m := range svc.Volumes {
			if ok && m.Type == types.VolumeTypeBind && v == m.Target {
				return m.Source, true
			}
		}
		return v, ok
	}
}

func lookupOr(env types.MappingWithEquals, k, def string) string {
	if v, ok := lookup(env)(k); ok {
		return v
	}
	return def
}

// envoyVersionAtLeast parses a tag like v1.40.2.
func envoyVersionAtLeast(tag string, major, minor int) bool {
	parts := strings.Split(strings.TrimPrefix(tag, "v"), ".")
	if len(parts) != 3 || !strings.HasPrefix(tag, "v") {
		return false // "latest" and friends are not pinned
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(parts[1])
	_, err3 := strconv.Atoi(parts[2])
	return err1 == nil && err2 == nil && err3 == nil && (ma > major || ma == major && mi >= minor)
}

// TestLocalEnvoyRecipe checks the README's recipe for an Envoy installed
// locally: envoy.yaml with the compose service names replaced by
// 127.0.0.1 (the same substitutions as the README's sed command).
func TestLocalEnvoyRecipe(t *testing.T) {
	b, err := os.ReadFile("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	local := strings.ReplaceAll(string(b), "address: proxysession", "address: 127.0.0.1")
	local = strings.ReplaceAll(local, "address: demo", "address: 127.0.0.1")
	path := filepath.Join(t.TempDir(), "envoy-local.yaml")
	if err := os.WriteFile(path, []byte(local), 0o600); err != nil {
		t.Fatal(err)
	}
	bs := loadBootstrap(t, path)
	checkServiceCluster(t, "local recipe", findCluster(t, bs, "proxysession"), "127.0.0.1", grpcPort(t))
	if readme, err := os.ReadFile("../README.md"); err != nil || !strings.Contains(string(readme),
		`sed -e 's/address: proxysession/address: 127.0.0.1/' -e 's/address: demo/address: 127.0.0.1/' envoy/envoy.yaml`) {
		t.Error("the README's recipe differs from the one tested here")
	}
}

// goControlPlaneVersion is the version of go-control-plane's envoy module
// these tests are built with (this module's go.mod requires it).
func goControlPlaneVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "github.com/envoyproxy/go-control-plane/envoy" {
			return f[1]
		}
	}
	t.Fatal("go-control-plane's envoy module is not a requirement of go.mod")
	return ""
}
