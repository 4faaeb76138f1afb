package envoy_test

import (
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
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

	"github.com/proxysession/proxysession/internal/config"
	"github.com/proxysession/proxysession/processor"
)

const (
	chartDir   = "../charts/proxysession"
	releaseNS  = "proxysession"
	releaseNam = "proxysession"
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
	checkChartDeployment(t, r)
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
		if len(r.certs) > 0 || len(c.Volumes) > 0 {
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
			if rule.Alert == "ProxysessionNoTraffic" {
				noTraffic = strings.Contains(expr, `proxysession_messages_total`) && strings.Contains(expr, "unless")
			}
		}
	}
	if !noTraffic && (r.envoyFilter != nil || r.eep != nil) {
		t.Error("no alert for a gateway with traffic while proxysession receives none (an integration that matches nothing)")
	}
}
