package helm

// The chart's tests. deploy/kubernetes/caretaker.yaml is the chart
// rendered with its default values (release and namespace "caretaker"),
// after a Namespace; TestPlainManifests fails when the two differ. After a
// change to the chart, rewrite it with
//
//	go test ./deploy/helm -run TestPlainManifests -update

import (
	"bytes"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	chartcommon "helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"caretaker/internal/agentcmd"
	"caretaker/internal/config"
	"caretaker/internal/logflags"
	"caretaker/remediation/policy"
)

var update = flag.Bool("update", false, "rewrite "+plainManifests+" from the chart's default rendering")

const (
	chartDir       = "caretaker"
	plainManifests = "../kubernetes/caretaker.yaml"
	release        = "caretaker"
	namespace      = "caretaker"
	// kubeVersion is the Kubernetes the chart is rendered and linted for
	// (Helm's default in a test binary is 1.20, below the chart's
	// kubeVersion).
	kubeVersion = "v1.33.0"
)

// object is one rendered Kubernetes object, decoded into its type.
type object struct {
	source string // the template, e.g. caretaker/templates/agent-daemonset.yaml
	kind   string
	name   string
	obj    any
}

func (o object) String() string { return fmt.Sprintf("%s %s (%s)", o.kind, o.name, o.source) }

// rendering is the chart rendered with some values.
type rendering struct {
	files   map[string]string // template path → rendered text
	objects []object
}

func capabilities() *chartcommon.Capabilities {
	caps := *chartcommon.DefaultCapabilities
	caps.KubeVersion = chartcommon.KubeVersion{Version: kubeVersion, Major: "1", Minor: "33"}
	return &caps
}

// renderChart renders the chart as `helm template caretaker
// deploy/helm/caretaker -n caretaker` would, with vals over values.yaml.
func renderChart(vals map[string]any) (map[string]string, error) {
	chrt, err := loader.Load(chartDir)
	if err != nil {
		return nil, fmt.Errorf("load chart: %w", err)
	}
	top, err := chartutil.ToRenderValues(chrt, vals, chartcommon.ReleaseOptions{Name: release, Namespace: namespace, IsInstall: true, Revision: 1}, capabilities())
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	return engine.Render(chrt, top)
}

// render renders the chart and decodes every object strictly: an unknown
// field, a wrong type or a duplicate key fails the test, naming the
// template and the object.
func render(t *testing.T, vals map[string]any) rendering {
	t.Helper()
	files, err := renderChart(vals)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	r := rendering{files: files}
	for _, src := range slices.Sorted(maps.Keys(files)) {
		if !strings.HasSuffix(src, ".yaml") {
			continue
		}
		for i, doc := range splitDocs(files[src]) {
			o, err := decode(src, doc)
			if err != nil {
				t.Fatalf("%s, document %d: %v\n%s", src, i, err, doc)
			}
			r.objects = append(r.objects, o)
		}
	}
	return r
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// splitDocs splits a rendered file into its YAML documents, leaving out
// those that hold nothing but comments.
func splitDocs(s string) []string {
	var docs []string
	for _, d := range docSep.Split(s, -1) {
		empty := true
		for _, line := range strings.Split(d, "\n") {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
				empty = false
				break
			}
		}
		if !empty {
			docs = append(docs, d)
		}
	}
	return docs
}

func decode(src, doc string) (object, error) {
	var head struct {
		metav1.TypeMeta   `json:",inline"`
		metav1.ObjectMeta `json:"metadata"`
	}
	if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
		return object{}, err
	}
	o := object{source: src, kind: head.Kind, name: head.Name}
	gvk := head.APIVersion + "/" + head.Kind
	switch gvk {
	case "v1/ConfigMap":
		o.obj = &corev1.ConfigMap{}
	case "v1/Secret":
		o.obj = &corev1.Secret{}
	case "v1/Service":
		o.obj = &corev1.Service{}
	case "apps/v1/DaemonSet":
		o.obj = &appsv1.DaemonSet{}
	case "apps/v1/StatefulSet":
		o.obj = &appsv1.StatefulSet{}
	case "policy/v1/PodDisruptionBudget":
		o.obj = &policyv1.PodDisruptionBudget{}
	case "networking.k8s.io/v1/NetworkPolicy":
		o.obj = &networkingv1.NetworkPolicy{}
	case "monitoring.coreos.com/v1/ServiceMonitor":
		// Its Go types are not a dependency: decoded as a map and its
		// fields checked against the few the chart may write.
		var m map[string]any
		if err := yaml.UnmarshalStrict([]byte(doc), &m); err != nil {
			return o, err
		}
		if err := checkServiceMonitor(m); err != nil {
			return o, err
		}
		o.obj = m
		return o, nil
	default:
		return o, fmt.Errorf("%s: a kind the tests do not know; add it to decode", gvk)
	}
	if err := yaml.UnmarshalStrict([]byte(doc), o.obj); err != nil {
		return o, fmt.Errorf("%s %s: %w", head.Kind, head.Name, err)
	}
	if head.Namespace != namespace {
		return o, fmt.Errorf("%s %s: metadata.namespace %q, want %q", head.Kind, head.Name, head.Namespace, namespace)
	}
	return o, nil
}

// checkServiceMonitor checks a ServiceMonitor's fields against the
// monitoring.coreos.com/v1 schema, for the fields the chart writes.
func checkServiceMonitor(m map[string]any) error {
	allowed := map[string][]string{
		"":            {"apiVersion", "kind", "metadata", "spec"},
		"metadata":    {"name", "namespace", "labels"},
		"spec":        {"selector", "endpoints"},
		"spec.select": {"matchLabels"},
		"endpoint":    {"port", "path", "interval"},
	}
	check := func(where string, v any, keys []string) error {
		mm, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("ServiceMonitor %s: not a map", where)
		}
		for k := range mm {
			if !slices.Contains(keys, k) {
				return fmt.Errorf("ServiceMonitor %s: unknown field %q", where, k)
			}
		}
		return nil
	}
	if err := check("", m, allowed[""]); err != nil {
		return err
	}
	if err := check("metadata", m["metadata"], allowed["metadata"]); err != nil {
		return err
	}
	spec, _ := m["spec"].(map[string]any)
	if err := check("spec", spec, allowed["spec"]); err != nil {
		return err
	}
	if err := check("spec.selector", spec["selector"], allowed["spec.select"]); err != nil {
		return err
	}
	eps, ok := spec["endpoints"].([]any)
	if !ok || len(eps) == 0 {
		return fmt.Errorf("ServiceMonitor spec.endpoints: want a list of endpoints, got %v", spec["endpoints"])
	}
	for i, ep := range eps {
		if err := check(fmt.Sprintf("spec.endpoints[%d]", i), ep, allowed["endpoint"]); err != nil {
			return err
		}
	}
	return nil
}

func (r rendering) find(kind, name string) (object, bool) {
	for _, o := range r.objects {
		if o.kind == kind && o.name == name {
			return o, true
		}
	}
	return object{}, false
}

func (r rendering) all(kind string) []object {
	var out []object
	for _, o := range r.objects {
		if o.kind == kind {
			out = append(out, o)
		}
	}
	return out
}

func (r rendering) mustFind(t *testing.T, kind, name string) object {
	t.Helper()
	o, ok := r.find(kind, name)
	if !ok {
		var have []string
		for _, o := range r.objects {
			have = append(have, o.kind+" "+o.name)
		}
		t.Fatalf("no %s %s in the rendering; it has: %s", kind, name, strings.Join(have, ", "))
	}
	return o
}

// The edge cases of the values. Each is checked against the whole policy.
type chartCase struct {
	name string
	vals string // YAML over values.yaml
	// replicas and ha: the servers' StatefulSet.
	replicas int32
	ha       bool
	// agentCaps: the capabilities the agent adds, exactly.
	agentCaps []corev1.Capability
	// nodeSelector: the agents'.
	nodeSelector map[string]string
	// secrets: the token Secrets the pods use (api, agent[, webhook]);
	// created: those the chart makes.
	secrets, created []string
	tls              bool
	serviceMonitor   bool
	agent            bool
}

var defaultCase = chartCase{
	name: "defaults", replicas: 3, ha: true, agent: true,
	agentCaps:    []corev1.Capability{"NET_ADMIN"},
	nodeSelector: map[string]string{"caretaker.io/hypervisor": "true"},
	secrets:      []string{"caretaker-api-token", "caretaker-agent-token"},
}

func cases() []chartCase {
	with := func(c chartCase, f func(*chartCase)) chartCase { f(&c); return c }
	return []chartCase{
		defaultCase,
		with(defaultCase, func(c *chartCase) {
			c.name, c.vals = "one server without HA", "server: {replicas: 1, ha: {enabled: false}}"
			c.replicas, c.ha = 1, false
		}),
		with(defaultCase, func(c *chartCase) {
			c.name, c.tls = "TLS", true
			c.vals = "tls: {enabled: true, serverSecret: ct-server, agentSecret: ct-agent}"
		}),
		with(defaultCase, func(c *chartCase) {
			c.name = "existing secrets"
			c.vals = "tokens: {api: {existingSecret: my-api}, agent: {existingSecret: my-agent}}"
			c.secrets = []string{"my-api", "my-agent"}
		}),
		with(defaultCase, func(c *chartCase) {
			c.name = "tokens from values"
			c.vals = `tokens:
  api: {value: "0123456789abcdef0123456789abcdef-api"}
  agent: {value: "0123456789abcdef0123456789abcdef-agent"}
  webhook: {enabled: true, value: "0123456789abcdef0123456789abcdef-hook"}`
			c.secrets = []string{"caretaker-api-token", "caretaker-agent-token", "caretaker-webhook-token"}
			c.created = c.secrets
		}),
		with(defaultCase, func(c *chartCase) {
			c.name, c.serviceMonitor = "serviceMonitor on", true
			c.vals = "serviceMonitor: {enabled: true, labels: {release: kube-prometheus-stack}}"
		}),
		with(defaultCase, func(c *chartCase) {
			c.name = "custom nodeSelector"
			// null removes the default label from the merged map.
			c.vals = `agent: {nodeSelector: {caretaker.io/hypervisor: null, node-role.example.com/kvm: "yes"}}`
			c.nodeSelector = map[string]string{"node-role.example.com/kvm": "yes"}
		}),
		with(defaultCase, func(c *chartCase) {
			c.name = "agent reads another network namespace"
			c.vals = "agent: {netns: {path: /var/run/netns/underlay}}"
			c.agentCaps = []corev1.Capability{"NET_ADMIN", "SYS_ADMIN"}
		}),
		with(defaultCase, func(c *chartCase) {
			c.name = "everything"
			c.tls = true
			c.vals = `tls: {enabled: true}
tokens: {webhook: {enabled: true}}
agent:
  config:
    overlays:
      - {cluster: prod, device: vx-prod, bridge: br-prod, vni: 100, underlay: eth1, peers: [{host: hv-b, address: 10.0.0.12}]}
  extraArgs: [--libvirt.timeout=10s]
  priorityClassName: ""
server:
  hosts:
    - {name: hv-a, agent: "10.0.0.11:9301"}
    - {name: hv-b, agent: "10.0.0.12:9301"}
  ha: {leaseTTL: 10s, etcd: {endpoints: [https://etcd-0.etcd:2379, https://etcd-1.etcd:2379], tlsSecret: etcd-client, clientCertificate: true}}
  policy:
    rules:
      - {name: restart, match: {alertname: GuestCrashed}, action: restart-vm}
  config:
    alerting: {alertmanagers: ["http://alertmanager:9093"]}
    prometheus: {retention: 720h}
  persistence: {storageClassName: fast, size: 50Gi}
  extraArgs: [--rules.dir=/etc/caretaker/rules]`
			c.secrets = []string{"caretaker-api-token", "caretaker-agent-token", "caretaker-webhook-token"}
		}),
		with(defaultCase, func(c *chartCase) {
			c.name, c.vals, c.agent = "no agent", "agent: {enabled: false}", false
		}),
	}
}

func parseVals(t *testing.T, s string) map[string]any {
	t.Helper()
	vals := map[string]any{}
	if err := yaml.Unmarshal([]byte(s), &vals); err != nil {
		t.Fatalf("test values: %v", err)
	}
	return vals
}

func TestChart(t *testing.T) {
	for _, c := range cases() {
		t.Run(c.name, func(t *testing.T) {
			r := render(t, parseVals(t, c.vals))
			checkServer(t, c, r)
			checkAgent(t, c, r)
			checkSecrets(t, c, r)
			checkServices(t, r)
			checkServerConfig(t, c, r)
			if _, ok := r.find("ServiceMonitor", "caretaker-server"); ok != c.serviceMonitor {
				t.Errorf("ServiceMonitor caretaker-server rendered: %v, want %v", ok, c.serviceMonitor)
			}
			if notes := r.files["caretaker/templates/NOTES.txt"]; !strings.Contains(notes, "caretaker-server") {
				t.Errorf("NOTES.txt does not name the server's Service:\n%s", notes)
			}
		})
	}
}

// Values the chart refuses, with the reason.
func TestChartRefuses(t *testing.T) {
	for _, tc := range []struct{ name, vals, want string }{
		{"replicas without HA", "server: {replicas: 3, ha: {enabled: false}}", "server.replicas > 1 needs server.ha.enabled"},
		{"HA without etcd", "server: {ha: {etcd: {endpoints: []}}}", "server.ha.enabled needs server.ha.etcd.endpoints"},
		{"short token", "tokens: {api: {value: short}}", "tokens.api.value has 5 characters: caretaker needs at least 32"},
		{"secret and value", `tokens: {agent: {existingSecret: x, value: "0123456789abcdef0123456789abcdef"}}`, "tokens.agent: set existingSecret or value, not both"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := renderChart(parseVals(t, tc.vals))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("render with %s: %v, want an error containing %q", tc.vals, err, tc.want)
			}
		})
	}
}

// checkContainers checks what every container of a pod must have: requests
// and limits of CPU and memory; liveness and readiness probes (not init
// containers, which cannot have them); no privilege escalation, a read-only
// root, every capability dropped, the runtime's seccomp profile.
func checkContainers(t *testing.T, what string, spec corev1.PodSpec, claims ...string) {
	t.Helper()
	podSeccomp := spec.SecurityContext != nil && spec.SecurityContext.SeccompProfile != nil &&
		spec.SecurityContext.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault
	type ctr struct {
		c    corev1.Container
		init bool
	}
	var all []ctr
	for _, c := range spec.InitContainers {
		all = append(all, ctr{c, true})
	}
	for _, c := range spec.Containers {
		all = append(all, ctr{c, false})
	}
	for _, x := range all {
		c := x.c
		where := fmt.Sprintf("%s container %s", what, c.Name)
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if q, ok := c.Resources.Requests[res]; !ok || q.IsZero() {
				t.Errorf("%s: resources.requests.%s is not set", where, res)
			}
			if q, ok := c.Resources.Limits[res]; !ok || q.IsZero() {
				t.Errorf("%s: resources.limits.%s is not set", where, res)
			}
		}
		if !x.init {
			if c.LivenessProbe == nil {
				t.Errorf("%s: no livenessProbe", where)
			}
			if c.ReadinessProbe == nil {
				t.Errorf("%s: no readinessProbe", where)
			}
		}
		sc := c.SecurityContext
		if sc == nil {
			t.Errorf("%s: no securityContext", where)
			continue
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s: securityContext.allowPrivilegeEscalation is not false", where)
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("%s: securityContext.privileged is true", where)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s: securityContext.readOnlyRootFilesystem is not true", where)
		}
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("%s: securityContext.capabilities.drop is not [ALL]", where)
		}
		containerSeccomp := sc.SeccompProfile != nil && sc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault
		if !containerSeccomp && !(podSeccomp && sc.SeccompProfile == nil) {
			t.Errorf("%s: seccompProfile is not RuntimeDefault (container or pod)", where)
		}
		checkMounts(t, where, c, spec.Volumes, claims)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s: automountServiceAccountToken is not false (caretaker calls no Kubernetes API)", what)
	}
}

// checkMounts checks that every mount names a volume of the pod (or one of
// a StatefulSet's claims).
func checkMounts(t *testing.T, where string, c corev1.Container, vols []corev1.Volume, claims []string) {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if !slices.Contains(claims, m.Name) && !slices.ContainsFunc(vols, func(v corev1.Volume) bool { return v.Name == m.Name }) {
			t.Errorf("%s: volumeMount %s names no volume of the pod", where, m.Name)
		}
	}
}

func checkServer(t *testing.T, c chartCase, r rendering) {
	t.Helper()
	o := r.mustFind(t, "StatefulSet", "caretaker-server")
	sts := o.obj.(*appsv1.StatefulSet)
	what := o.String()
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != c.replicas {
		t.Errorf("%s: spec.replicas %v, want %d", what, sts.Spec.Replicas, c.replicas)
	}
	if sts.Spec.ServiceName != "caretaker-server-headless" {
		t.Errorf("%s: spec.serviceName %q, want caretaker-server-headless", what, sts.Spec.ServiceName)
	}
	spec := sts.Spec.Template.Spec
	var claims []string
	for _, pvc := range sts.Spec.VolumeClaimTemplates {
		claims = append(claims, pvc.Name)
	}
	checkContainers(t, what, spec, claims...)
	checkSelector(t, what, sts.Spec.Selector, sts.Spec.Template.Labels)
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("%s: spec.template.spec.securityContext must set runAsNonRoot true and a non-zero runAsUser", what)
	}
	for _, ctr := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		sc := ctr.SecurityContext
		if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
			t.Errorf("%s container %s: securityContext must run as non-root (runAsNonRoot true, runAsUser not 0)", what, ctr.Name)
		}
		if sc != nil && sc.Capabilities != nil && len(sc.Capabilities.Add) > 0 {
			t.Errorf("%s container %s: adds capabilities %v; the server needs none", what, ctr.Name, sc.Capabilities.Add)
		}
	}
	aff := spec.Affinity
	if aff == nil || aff.PodAntiAffinity == nil || len(aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) == 0 {
		t.Errorf("%s: no preferred podAntiAffinity spreading the replicas", what)
	} else {
		term := aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm
		if term.TopologyKey != "kubernetes.io/hostname" {
			t.Errorf("%s: podAntiAffinity topologyKey %q, want kubernetes.io/hostname", what, term.TopologyKey)
		}
		checkSelector(t, what+" podAntiAffinity", term.LabelSelector, sts.Spec.Template.Labels)
	}
	if len(sts.Spec.VolumeClaimTemplates) != 1 || sts.Spec.VolumeClaimTemplates[0].Name != "data" {
		t.Errorf("%s: want one volumeClaimTemplate named data, got %d", what, len(sts.Spec.VolumeClaimTemplates))
	}

	pdb := r.mustFind(t, "PodDisruptionBudget", "caretaker-server")
	p := pdb.obj.(*policyv1.PodDisruptionBudget)
	if p.Spec.MaxUnavailable == nil || p.Spec.MaxUnavailable.IntValue() != 1 {
		t.Errorf("%s: spec.maxUnavailable %v, want 1", pdb, p.Spec.MaxUnavailable)
	}
	checkSelector(t, pdb.String(), p.Spec.Selector, sts.Spec.Template.Labels)

	np := r.mustFind(t, "NetworkPolicy", "caretaker-server")
	pol := np.obj.(*networkingv1.NetworkPolicy)
	checkSelector(t, np.String(), &pol.Spec.PodSelector, sts.Spec.Template.Labels)
	if len(pol.Spec.Ingress) != 1 || len(pol.Spec.Ingress[0].Ports) != 1 || pol.Spec.Ingress[0].Ports[0].Port.IntValue() != 9300 {
		t.Errorf("%s: want one ingress rule to port 9300, got %+v", np, pol.Spec.Ingress)
	}
}

func checkAgent(t *testing.T, c chartCase, r rendering) {
	t.Helper()
	o, ok := r.find("DaemonSet", "caretaker-agent")
	if ok != c.agent {
		t.Fatalf("DaemonSet caretaker-agent rendered: %v, want %v", ok, c.agent)
	}
	if !ok {
		return
	}
	ds := o.obj.(*appsv1.DaemonSet)
	what := o.String()
	spec := ds.Spec.Template.Spec
	checkContainers(t, what, spec)
	checkSelector(t, what, ds.Spec.Selector, ds.Spec.Template.Labels)
	if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet || spec.HostPID {
		t.Errorf("%s: hostNetwork %v, dnsPolicy %q, hostPID %v; want true, ClusterFirstWithHostNet, false", what, spec.HostNetwork, spec.DNSPolicy, spec.HostPID)
	}
	if !maps.Equal(spec.NodeSelector, c.nodeSelector) {
		t.Errorf("%s: nodeSelector %v, want %v", what, spec.NodeSelector, c.nodeSelector)
	}
	if !slices.ContainsFunc(spec.Tolerations, func(tol corev1.Toleration) bool {
		return tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == ""
	}) {
		t.Errorf("%s: tolerations %+v do not tolerate every taint (operator Exists, no key, no effect)", what, spec.Tolerations)
	}
	u := ds.Spec.UpdateStrategy
	if u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil || u.RollingUpdate.MaxUnavailable == nil || u.RollingUpdate.MaxUnavailable.String() != "10%" {
		t.Errorf("%s: updateStrategy %+v, want RollingUpdate with maxUnavailable 10%%", what, u)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%s: %d containers, want 1", what, len(spec.Containers))
	}
	ctr := spec.Containers[0]
	sc := ctr.SecurityContext
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Errorf("%s: the agent runs as user %v, want 0 (libvirtd's socket)", what, sc.RunAsUser)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Add, c.agentCaps) {
		t.Errorf("%s: capabilities.add %v, want exactly %v", what, sc.Capabilities.Add, c.agentCaps)
	}
	probe := ctr.LivenessProbe
	if c.tls && (probe == nil || probe.TCPSocket == nil || ctr.ReadinessProbe.TCPSocket == nil) {
		t.Errorf("%s: with TLS the probes must be tcpSocket (an HTTP probe has no client certificate)", what)
	}
	if !c.tls && (probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != "/" || ctr.ReadinessProbe.HTTPGet == nil) {
		t.Errorf("%s: without TLS the probes must be HTTP GET /", what)
	}
	// The arguments are the agent's own flags, parsed by its own command.
	cmd := agentcmd.New("caretaker-agent", logflags.New().Logger)
	logflags.New().Register(cmd.PersistentFlags())
	if err := cmd.ParseFlags(ctr.Args); err != nil {
		t.Errorf("%s: the agent refuses its arguments %q: %v", what, ctr.Args, err)
	}
	flagValue := func(name string) string {
		f := cmd.Flags().Lookup(name)
		if f == nil || !f.Changed {
			return ""
		}
		return f.Value.String()
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range ctr.VolumeMounts {
		mounts[m.MountPath] = m
	}
	hostPaths := map[string]string{} // volume name → host path
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	for _, want := range []struct{ flag, value, hostPath string }{
		{"path.procfs", "/host/proc", "/proc"},
		{"path.sysfs", "/host/sys", "/sys"},
		{"path.rootfs", "/host/root", "/"},
		{"state.dir", "/var/lib/caretaker-agent", "/var/lib/caretaker-agent"},
	} {
		if got := flagValue(want.flag); got != want.value {
			t.Errorf("%s: --%s %q, want %q", what, want.flag, got, want.value)
		}
		m, ok := mounts[want.value]
		if !ok || hostPaths[m.Name] != want.hostPath {
			t.Errorf("%s: --%s %s is not the host's %s (mount %+v)", what, want.flag, want.value, want.hostPath, m)
		}
		if ok && want.flag != "state.dir" && !m.ReadOnly {
			t.Errorf("%s: %s is mounted read-write", what, want.value)
		}
	}
	if m := mounts["/var/run/netns"]; hostPaths[m.Name] != "/var/run/netns" || m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationHostToContainer {
		t.Errorf("%s: /var/run/netns is not the host's with HostToContainer propagation: %+v", what, m)
	}
	if m := mounts["/var/run/libvirt"]; hostPaths[m.Name] != "/var/run/libvirt" {
		t.Errorf("%s: /var/run/libvirt is not the host's libvirt socket directory: %+v", what, m)
	}
	if got := flagValue("libvirt.uri"); got != "qemu:///system" {
		t.Errorf("%s: --libvirt.uri %q, want qemu:///system", what, got)
	}
	if got := flagValue("action.token-file"); !strings.HasPrefix(got, "/etc/caretaker/token/") {
		t.Errorf("%s: --action.token-file %q is not in the token Secret's mount", what, got)
	}
	if got := flagValue("web.config.file"); (got != "") != c.tls {
		t.Errorf("%s: --web.config.file %q with TLS %v", what, got, c.tls)
	}
	if c.tls {
		cm := r.mustFind(t, "ConfigMap", "caretaker-agent").obj.(*corev1.ConfigMap)
		web := cm.Data["web.yml"]
		for _, want := range []string{"client_auth_type: RequireAndVerifyClientCert", "client_allowed_sans: [\"caretaker-server\"]", "cert_file: /etc/caretaker/tls/tls.crt"} {
			if !strings.Contains(web, want) {
				t.Errorf("ConfigMap caretaker-agent web.yml lacks %q:\n%s", want, web)
			}
		}
	}
	for _, v := range spec.Volumes {
		if v.Secret != nil && (v.Secret.DefaultMode == nil || *v.Secret.DefaultMode != 0o400) {
			t.Errorf("%s: Secret volume %s has mode %v, want 0400 (the agent refuses a token others may read)", what, v.Name, v.Secret.DefaultMode)
		}
	}
	if spec.PriorityClassName != "system-node-critical" && !strings.Contains(c.vals, "priorityClassName") {
		t.Errorf("%s: priorityClassName %q, want system-node-critical", what, spec.PriorityClassName)
	}

	np := r.mustFind(t, "NetworkPolicy", "caretaker-agent")
	pol := np.obj.(*networkingv1.NetworkPolicy)
	checkSelector(t, np.String(), &pol.Spec.PodSelector, ds.Spec.Template.Labels)
	server := r.mustFind(t, "StatefulSet", "caretaker-server").obj.(*appsv1.StatefulSet)
	if len(pol.Spec.Ingress) != 1 || len(pol.Spec.Ingress[0].From) != 1 || len(pol.Spec.Ingress[0].Ports) != 1 ||
		pol.Spec.Ingress[0].Ports[0].Port.IntValue() != 9301 {
		t.Fatalf("%s: want one ingress rule from the servers to port 9301, got %+v", np, pol.Spec.Ingress)
	}
	checkSelector(t, np.String()+" ingress from", pol.Spec.Ingress[0].From[0].PodSelector, server.Spec.Template.Labels)
}

// checkSelector checks that sel selects a pod with podLabels.
func checkSelector(t *testing.T, what string, sel *metav1.LabelSelector, podLabels map[string]string) {
	t.Helper()
	if sel == nil {
		t.Errorf("%s: no selector", what)
		return
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Errorf("%s: selector: %v", what, err)
		return
	}
	if s.Empty() || !s.Matches(labels.Set(podLabels)) {
		t.Errorf("%s: selector %v does not select the pods (labels %v)", what, s, podLabels)
	}
}

// checkSecrets checks that the pods use the expected token Secrets and
// that the chart creates those it should, each with a token of 32
// characters or more.
func checkSecrets(t *testing.T, c chartCase, r rendering) {
	t.Helper()
	used := map[string]bool{}
	for _, o := range r.objects {
		var spec corev1.PodSpec
		switch w := o.obj.(type) {
		case *appsv1.StatefulSet:
			spec = w.Spec.Template.Spec
		case *appsv1.DaemonSet:
			spec = w.Spec.Template.Spec
		default:
			continue
		}
		for _, v := range spec.Volumes {
			if v.Secret != nil && v.Name == "token" { // the agent's
				used[v.Secret.SecretName] = true
			}
			if v.Projected != nil {
				for _, s := range v.Projected.Sources {
					if s.Secret != nil {
						used[s.Secret.Name] = true
					}
				}
			}
		}
	}
	if got := slices.Sorted(maps.Keys(used)); !slices.Equal(got, slices.Sorted(slices.Values(c.secrets))) {
		t.Errorf("token Secrets used %v, want %v", got, slices.Sorted(slices.Values(c.secrets)))
	}
	var created []string
	for _, o := range r.all("Secret") {
		s := o.obj.(*corev1.Secret)
		created = append(created, s.Name)
		if tok := s.Data["token"]; len(tok) < 32 {
			t.Errorf("%s: data.token has %d bytes, want at least 32", o, len(tok))
		}
	}
	sort.Strings(created)
	if want := slices.Sorted(slices.Values(c.created)); !slices.Equal(created, want) {
		t.Errorf("Secrets created %v, want %v", created, want)
	}
}

// checkServices checks that every Service selects the pods of a workload
// and that its target ports are ports of their containers.
func checkServices(t *testing.T, r rendering) {
	t.Helper()
	type pods struct {
		labels map[string]string
		ports  []string
	}
	var workloads []pods
	for _, o := range r.objects {
		var tmpl corev1.PodTemplateSpec
		switch w := o.obj.(type) {
		case *appsv1.StatefulSet:
			tmpl = w.Spec.Template
		case *appsv1.DaemonSet:
			tmpl = w.Spec.Template
		default:
			continue
		}
		p := pods{labels: tmpl.Labels}
		for _, c := range tmpl.Spec.Containers {
			for _, port := range c.Ports {
				p.ports = append(p.ports, port.Name, fmt.Sprint(port.ContainerPort))
			}
		}
		workloads = append(workloads, p)
	}
	for _, o := range r.all("Service") {
		svc := o.obj.(*corev1.Service)
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		i := slices.IndexFunc(workloads, func(p pods) bool { return len(svc.Spec.Selector) > 0 && sel.Matches(labels.Set(p.labels)) })
		if i < 0 {
			t.Errorf("%s: selector %v selects no workload's pods", o, svc.Spec.Selector)
			continue
		}
		for _, port := range svc.Spec.Ports {
			if !slices.Contains(workloads[i].ports, port.TargetPort.String()) {
				t.Errorf("%s: targetPort %s is no port of the pods (%v)", o, port.TargetPort.String(), workloads[i].ports)
			}
		}
	}
	if _, ok := r.find("Service", "caretaker-server-headless"); !ok {
		t.Errorf("no headless Service caretaker-server-headless")
	}
}

// checkServerConfig runs the servers' init containers on this machine, as
// the kubelet would (their paths moved under a temporary directory, the
// token Secrets' files stubbed with 64-character tokens, mode 0440 as
// fsGroup leaves them), and loads what they write with caretaker's own
// configuration loader, reading every token and the policy: the chart must
// never ship a configuration the server refuses.
func checkServerConfig(t *testing.T, c chartCase, r rendering) {
	t.Helper()
	sts := r.mustFind(t, "StatefulSet", "caretaker-server").obj.(*appsv1.StatefulSet)
	cm := r.mustFind(t, "ConfigMap", "caretaker-server").obj.(*corev1.ConfigMap)
	spec := sts.Spec.Template.Spec
	root := t.TempDir()
	moved := func(p string) string { return filepath.Join(root, p) }

	// The volumes as the kubelet fills them.
	volumes := map[string]func(dir string){}
	for _, v := range spec.Volumes {
		switch {
		case v.ConfigMap != nil:
			if v.ConfigMap.Name != cm.Name {
				t.Fatalf("StatefulSet caretaker-server: volume %s names ConfigMap %s, not %s", v.Name, v.ConfigMap.Name, cm.Name)
			}
			items := v.ConfigMap.Items
			if len(items) == 0 {
				for _, k := range slices.Sorted(maps.Keys(cm.Data)) {
					items = append(items, corev1.KeyToPath{Key: k, Path: k})
				}
			}
			volumes[v.Name] = func(dir string) {
				for _, it := range items {
					data, ok := cm.Data[it.Key]
					if !ok {
						t.Fatalf("StatefulSet caretaker-server: volume %s wants key %s, which ConfigMap %s lacks", v.Name, it.Key, cm.Name)
					}
					writeFile(t, filepath.Join(dir, it.Path), data, 0o644)
				}
			}
		case v.Projected != nil:
			volumes[v.Name] = func(dir string) {
				for _, s := range v.Projected.Sources {
					for _, it := range s.Secret.Items {
						// fsGroup makes a Secret's files group-readable.
						writeFile(t, filepath.Join(dir, it.Path), strings.Repeat("t", 60)+it.Path, 0o440)
					}
				}
			}
		default:
			volumes[v.Name] = func(string) {}
		}
	}
	mountAll := func(ctr corev1.Container) {
		for _, m := range ctr.VolumeMounts {
			dir := moved(m.MountPath)
			if _, err := os.Stat(dir); err == nil {
				continue
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if fill := volumes[m.Name]; fill != nil { // nil: a claim, empty
				fill(dir)
			}
		}
	}
	env := map[string]string{"POD_NAME": "caretaker-server-0"}
	for _, ctr := range spec.InitContainers {
		mountAll(ctr)
		if _, err := exec.LookPath(ctr.Command[0]); err != nil {
			t.Skipf("init container %s runs %s, which this machine lacks: %v", ctr.Name, ctr.Command[0], err)
		}
		args := make([]string, len(ctr.Command)-1)
		for i, a := range ctr.Command[1:] {
			a = os.Expand(strings.ReplaceAll(strings.ReplaceAll(a, "$(", "${"), ")", "}"), func(k string) string { return env[k] })
			args[i] = movePaths(a, ctr, root)
		}
		out, err := exec.Command(ctr.Command[0], args...).CombinedOutput()
		if err != nil {
			t.Fatalf("init container %s: %s %q: %v\n%s", ctr.Name, ctr.Command[0], args, err, out)
		}
	}
	server := spec.Containers[0]
	mountAll(server)

	var configFile string
	for _, a := range server.Args {
		if v, ok := strings.CutPrefix(a, "--config.file="); ok {
			configFile = v
		}
	}
	if configFile == "" {
		t.Fatalf("StatefulSet caretaker-server: the server has no --config.file=… argument: %q", server.Args)
	}
	if !underMount(configFile, server) {
		t.Errorf("StatefulSet caretaker-server: --config.file %s is on no volume of the server container", configFile)
	}
	data, err := os.ReadFile(moved(configFile))
	if err != nil {
		t.Fatalf("the config init container wrote no %s: %v", configFile, err)
	}
	if strings.Contains(string(data), "@POD_NAME@") {
		t.Errorf("server.yml still holds @POD_NAME@:\n%s", data)
	}
	// Every file server.yml names must be in a volume of the server
	// container; the test reads them under root.
	var paths []string
	text := regexp.MustCompile(`(?m)(_file|_dir|data_dir): (/\S+)$`).ReplaceAllStringFunc(string(data), func(s string) string {
		i := strings.Index(s, ": ")
		p := s[i+2:]
		paths = append(paths, p)
		return s[:i+2] + moved(p)
	})
	for _, p := range paths {
		if !underMount(p, server) {
			t.Errorf("server.yml names %s, which is on no volume of the server container", p)
		}
	}
	file := filepath.Join(root, "server.yml")
	writeFile(t, file, text, 0o644)
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatalf("caretaker refuses the chart's server.yml: %v\n%s", err, data)
	}
	if _, err := cfg.APICredentials(); err != nil {
		t.Errorf("the server's API tokens: %v", err)
	}
	if _, err := config.ReadSecret(cfg.Path(cfg.Agents.TokenFile)); err != nil {
		t.Errorf("the server's agents.token_file: %v", err)
	}
	if f := cfg.Remediation.Webhook.TokenFile; f != "" {
		if _, err := config.ReadSecret(cfg.Path(f)); err != nil {
			t.Errorf("the server's remediation.webhook.token_file: %v", err)
		}
	}
	if f := cfg.Remediation.PolicyFile; f != "" {
		if _, err := policy.Load(cfg.Path(f)); err != nil {
			t.Errorf("the server's policy: %v", err)
		}
	}
	if cfg.Cluster.Enabled() != c.ha {
		t.Errorf("server.yml cluster section present: %v, want %v", cfg.Cluster.Enabled(), c.ha)
	}
	if c.ha {
		if cfg.Cluster.Name != "caretaker-server-0" {
			t.Errorf("server.yml cluster.name %q, want the pod's name caretaker-server-0", cfg.Cluster.Name)
		}
		if want := "http://caretaker-server-0.caretaker-server-headless.caretaker.svc:9300"; cfg.Cluster.AdvertiseURL != want {
			t.Errorf("server.yml cluster.advertise_url %q, want %q", cfg.Cluster.AdvertiseURL, want)
		}
	}
	if cfg.Agents.TLS.Enabled() != c.tls {
		t.Errorf("server.yml agents.tls set: %v, want %v", cfg.Agents.TLS.Enabled(), c.tls)
	}
}

// movePaths moves the absolute paths in a that lie in one of ctr's mounts
// under root.
func movePaths(a string, ctr corev1.Container, root string) string {
	for _, m := range ctr.VolumeMounts {
		if strings.Contains(a, m.MountPath) {
			return regexp.MustCompile(`(^|[ =])`+regexp.QuoteMeta(m.MountPath)).ReplaceAllString(a, "${1}"+root+m.MountPath)
		}
	}
	return a
}

func underMount(p string, ctr corev1.Container) bool {
	for _, m := range ctr.VolumeMounts {
		if p == m.MountPath || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/") {
			return true
		}
	}
	return false
}

func writeFile(t *testing.T, name, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(name, mode); err != nil {
		t.Fatal(err)
	}
}

// TestLint runs `helm lint --strict` on the chart (the SDK's linter, what
// action.Lint runs, without the action package's client dependencies),
// with the default values and with every case's.
func TestLint(t *testing.T) {
	for _, c := range cases() {
		t.Run(c.name, func(t *testing.T) {
			kv := &chartcommon.KubeVersion{Version: kubeVersion, Major: "1", Minor: "33"}
			res := lint.RunAll(chartDir, parseVals(t, c.vals), namespace, lint.WithKubeVersion(kv))
			for _, m := range res.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("helm lint --strict: %s", m)
				} else {
					t.Logf("helm lint: %s", m)
				}
			}
		})
	}
}

// plain renders the chart with its default values as one file: a
// Namespace, then every template's objects in the order of their names.
func plain(t *testing.T) []byte {
	t.Helper()
	files, err := renderChart(nil)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `# caretaker on Kubernetes: deploy/helm/caretaker rendered with its default
# values (release and namespace %q). Do not edit: change the chart and run
#   go test ./deploy/helm -run TestPlainManifests -update
# Before applying it, label the hypervisor nodes and make the two token
# Secrets (README, "Install on a fleet → Kubernetes"):
#   kubectl label node <hypervisor> caretaker.io/hypervisor=true
#   kubectl -n caretaker create secret generic caretaker-api-token --from-file=token=api.token
#   kubectl -n caretaker create secret generic caretaker-agent-token --from-file=token=agent.token
# and point server.yml's etcd endpoints (ConfigMap caretaker-server) at your etcd.
---
apiVersion: v1
kind: Namespace
metadata:
  name: %s
`, namespace, namespace)
	for _, src := range slices.Sorted(maps.Keys(files)) {
		if !strings.HasSuffix(src, ".yaml") {
			continue
		}
		for _, doc := range splitDocs(files[src]) {
			fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", src, strings.Trim(doc, "\n"))
		}
	}
	return b.Bytes()
}

func TestPlainManifests(t *testing.T) {
	got := plain(t)
	if *update {
		if err := os.WriteFile(plainManifests, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(plainManifests)
	if err != nil {
		t.Fatalf("%v (go test ./deploy/helm -run TestPlainManifests -update writes it)", err)
	}
	if !bytes.Equal(got, want) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		line := 0
		for line < len(gl) && line < len(wl) && gl[line] == wl[line] {
			line++
		}
		at := func(l []string) string {
			if line < len(l) {
				return l[line]
			}
			return "(end of file)"
		}
		t.Fatalf("%s is out of step with the chart, from line %d:\n  file:  %s\n  chart: %s\nrun: go test ./deploy/helm -run TestPlainManifests -update",
			plainManifests, line+1, at(wl), at(gl))
	}
	// The file is what kubectl applies: every object in it decodes strictly.
	for i, doc := range splitDocs(string(want)) {
		if i == 0 {
			continue // the Namespace
		}
		if _, err := decode(plainManifests, doc); err != nil {
			t.Errorf("%s, document %d: %v", plainManifests, i, err)
		}
	}
}
