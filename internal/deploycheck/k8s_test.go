package deploycheck

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// rendered holds every object of the dev overlay, decoded strictly.
type rendered struct {
	deployments  []*appsv1.Deployment
	statefulsets []*appsv1.StatefulSet
	services     []*corev1.Service
	configmaps   map[string]*corev1.ConfigMap
	pdbs         []*policyv1.PodDisruptionBudget
	netpols      []*networkingv1.NetworkPolicy
	kinds        map[string]int
}

// workload is a pod template with its owner's name.
type workload struct {
	name     string
	selector *metav1.LabelSelector
	tmpl     corev1.PodTemplateSpec
}

func (r *rendered) workloads() []workload {
	var ws []workload
	for _, d := range r.deployments {
		ws = append(ws, workload{d.Name, d.Spec.Selector, d.Spec.Template})
	}
	for _, s := range r.statefulsets {
		ws = append(ws, workload{s.Name, s.Spec.Selector, s.Spec.Template})
	}
	return ws
}

func render(t *testing.T, overlay string) *rendered {
	t.Helper()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not installed: the manifests cannot be rendered here (install kubectl to run this test)")
	}
	out, err := exec.Command(kubectl, "kustomize", filepath.Join(root, overlay)).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", overlay, err, out)
	}
	r := &rendered{configmaps: map[string]*corev1.ConfigMap{}, kinds: map[string]int{}}
	for i, doc := range bytes.Split(out, []byte("\n---\n")) {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		r.kinds[meta.Kind]++
		var obj any
		switch meta.Kind {
		case "Deployment":
			d := &appsv1.Deployment{}
			r.deployments, obj = append(r.deployments, d), d
		case "StatefulSet":
			s := &appsv1.StatefulSet{}
			r.statefulsets, obj = append(r.statefulsets, s), s
		case "Service":
			s := &corev1.Service{}
			r.services, obj = append(r.services, s), s
		case "ConfigMap":
			obj = &corev1.ConfigMap{}
		case "PodDisruptionBudget":
			p := &policyv1.PodDisruptionBudget{}
			r.pdbs, obj = append(r.pdbs, p), p
		case "NetworkPolicy":
			n := &networkingv1.NetworkPolicy{}
			r.netpols, obj = append(r.netpols, n), n
		case "Namespace":
			obj = &corev1.Namespace{}
		case "ServiceAccount":
			obj = &corev1.ServiceAccount{}
		case "Role":
			obj = &rbacv1.Role{}
		case "RoleBinding":
			obj = &rbacv1.RoleBinding{}
		default:
			t.Fatalf("document %d: unexpected kind %q", i, meta.Kind)
		}
		// Strict: an unknown or misspelled field fails.
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			t.Fatalf("%s (document %d): %v", meta.Kind, i, err)
		}
		if cm, ok := obj.(*corev1.ConfigMap); ok {
			r.configmaps[cm.Name] = cm
		}
	}
	return r
}

func TestKustomizeDevOverlay(t *testing.T) {
	r := render(t, "k8s/overlays/dev")
	for _, k := range []string{"Namespace", "Deployment", "StatefulSet", "Service", "ConfigMap",
		"PodDisruptionBudget", "NetworkPolicy", "ServiceAccount", "Role", "RoleBinding"} {
		if r.kinds[k] == 0 {
			t.Errorf("no %s rendered", k)
		}
	}
	ws := r.workloads()
	helps := helpCache{}
	for _, w := range ws {
		sel, err := metav1.LabelSelectorAsSelector(w.selector)
		if err != nil || !sel.Matches(labels.Set(w.tmpl.Labels)) {
			t.Errorf("%s: selector %v does not match its pod labels %v", w.name, w.selector, w.tmpl.Labels)
		}
		pod := w.tmpl.Spec
		if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot {
			t.Errorf("%s: pod does not require runAsNonRoot", w.name)
		}
		for _, v := range pod.Volumes {
			if v.ConfigMap == nil {
				continue
			}
			cm, ok := r.configmaps[v.ConfigMap.Name]
			if !ok {
				t.Errorf("%s: volume %s names ConfigMap %s, which is not rendered", w.name, v.Name, v.ConfigMap.Name)
				continue
			}
			for _, it := range v.ConfigMap.Items {
				if _, ok := cm.Data[it.Key]; !ok {
					t.Errorf("%s: ConfigMap %s has no key %s", w.name, cm.Name, it.Key)
				}
			}
		}
		for _, c := range pod.Containers {
			where := w.name + "/" + c.Name
			sc := c.SecurityContext
			if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
				sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("%s: needs readOnlyRootFilesystem and no privilege escalation", where)
			}
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
				t.Errorf("%s: needs cpu requests and memory limits", where)
			}
			if c.ReadinessProbe == nil {
				t.Errorf("%s: no readiness probe", where)
			}
			ports := map[string]int32{}
			for _, p := range c.Ports {
				ports[p.Name] = p.ContainerPort
			}
			for _, pr := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
				if pr == nil || pr.HTTPGet == nil {
					continue
				}
				if pr.HTTPGet.Port.StrVal != "" {
					if _, ok := ports[pr.HTTPGet.Port.StrVal]; !ok {
						t.Errorf("%s: probe port %q is not a container port", where, pr.HTTPGet.Port.StrVal)
					}
				}
			}
			if len(c.Command) == 0 {
				t.Errorf("%s: no command", where)
				continue
			}
			if _, ok := Binaries[c.Command[0]]; !ok {
				continue // third-party image (redis)
			}
			if !strings.HasPrefix(c.Image, "sidemesh:") {
				t.Errorf("%s: runs %s from image %s", where, c.Command[0], c.Image)
			}
			args := helps.checkCommand(t, where, c.Command)
			// The admin flag and the admin container port agree.
			if adm, ok := FlagValue(args, "admin-addr"); ok {
				if p, ok := ports["admin"]; !ok || !strings.HasSuffix(adm, fmt.Sprintf(":%d", p)) {
					t.Errorf("%s: --admin-addr %s but container port admin=%d", where, adm, p)
				}
			}
			if c.LivenessProbe == nil && c.Command[0] != "meshrun" {
				t.Errorf("%s: no liveness probe", where)
			}
		}
	}
	matchAny := func(sel labels.Selector) []workload {
		var m []workload
		for _, w := range ws {
			if sel.Matches(labels.Set(w.tmpl.Labels)) {
				m = append(m, w)
			}
		}
		return m
	}
	for _, s := range r.services {
		matched := matchAny(labels.SelectorFromSet(s.Spec.Selector))
		if len(matched) == 0 {
			t.Errorf("Service %s selects no workload (%v)", s.Name, s.Spec.Selector)
			continue
		}
		for _, sp := range s.Spec.Ports {
			if sp.TargetPort.StrVal == "" {
				continue
			}
			found := false
			for _, w := range matched {
				for _, c := range w.tmpl.Spec.Containers {
					for _, cp := range c.Ports {
						if cp.Name == sp.TargetPort.StrVal && cp.Protocol == sp.Protocol || cp.Name == sp.TargetPort.StrVal && sp.Protocol == "" {
							found = true
						}
					}
				}
			}
			if !found {
				t.Errorf("Service %s port %s: target port %q is not a container port of %s", s.Name, sp.Name, sp.TargetPort.StrVal, matched[0].name)
			}
		}
	}
	for _, st := range r.statefulsets {
		ok := false
		for _, s := range r.services {
			if s.Name == st.Spec.ServiceName && s.Spec.ClusterIP == corev1.ClusterIPNone {
				ok = true
			}
		}
		if !ok {
			t.Errorf("StatefulSet %s: serviceName %s is not a headless Service", st.Name, st.Spec.ServiceName)
		}
	}
	for _, p := range r.pdbs {
		sel, _ := metav1.LabelSelectorAsSelector(p.Spec.Selector)
		if len(matchAny(sel)) == 0 {
			t.Errorf("PDB %s selects nothing", p.Name)
		}
	}
	for _, n := range r.netpols {
		sel, _ := metav1.LabelSelectorAsSelector(&n.Spec.PodSelector)
		if len(matchAny(sel)) == 0 {
			t.Errorf("NetworkPolicy %s protects no workload", n.Name)
		}
		for _, in := range n.Spec.Ingress {
			for _, from := range in.From {
				if from.PodSelector == nil {
					continue
				}
				fsel, _ := metav1.LabelSelectorAsSelector(from.PodSelector)
				if len(matchAny(fsel)) == 0 {
					t.Errorf("NetworkPolicy %s admits pods %v, but no workload has those labels", n.Name, from.PodSelector)
				}
			}
		}
	}
}
