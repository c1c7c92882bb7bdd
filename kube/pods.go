package kube

import (
	"encoding/json"
	"fmt"
	"strings"
)

// podList mirrors the parts of the kubelet's /pods answer (a core/v1
// PodList) that naming needs.
type podList struct {
	Kind  string `json:"kind"`
	Items []pod  `json:"items"`
}

type pod struct {
	Metadata struct {
		Name            string            `json:"name"`
		Namespace       string            `json:"namespace"`
		UID             string            `json:"uid"`
		Labels          map[string]string `json:"labels"`
		OwnerReferences []struct {
			Kind       string `json:"kind"`
			Name       string `json:"name"`
			Controller *bool  `json:"controller"`
		} `json:"ownerReferences"`
	} `json:"metadata"`
	Spec struct {
		HostNetwork bool `json:"hostNetwork"`
	} `json:"spec"`
	Status struct {
		PodIP  string `json:"podIP"`
		PodIPs []struct {
			IP string `json:"ip"`
		} `json:"podIPs"`
		ContainerStatuses     []containerStatus `json:"containerStatuses"`
		InitContainerStatuses []containerStatus `json:"initContainerStatuses"`
	} `json:"status"`
}

type containerStatus struct {
	Name        string `json:"name"`
	ContainerID string `json:"containerID"` // "<runtime>://<id>"
}

// Pod is what the exporter knows of one pod of this node.
type Pod struct {
	Namespace, Name, UID string
	// Workload is the owning Deployment, StatefulSet, DaemonSet, Job or
	// CronJob-less Job, else the pod's own name.
	Workload    string
	HostNetwork bool
	IPs         []string
	// Containers maps container ids (without the runtime prefix) to
	// container names, init containers included.
	Containers map[string]string
}

// parsePods decodes a kubelet /pods answer.
func parsePods(b []byte) ([]Pod, error) {
	var l podList
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("decode kubelet pods: %w", err)
	}
	if l.Kind != "PodList" {
		return nil, fmt.Errorf("decode kubelet pods: kind %q, want PodList", l.Kind)
	}
	out := make([]Pod, 0, len(l.Items))
	for i := range l.Items {
		p := &l.Items[i]
		if p.Metadata.Name == "" || p.Metadata.Namespace == "" {
			continue
		}
		q := Pod{
			Namespace:   p.Metadata.Namespace,
			Name:        p.Metadata.Name,
			UID:         p.Metadata.UID,
			Workload:    workload(p),
			HostNetwork: p.Spec.HostNetwork,
			Containers:  make(map[string]string),
		}
		for _, ip := range p.Status.PodIPs {
			q.IPs = append(q.IPs, ip.IP)
		}
		if len(q.IPs) == 0 && p.Status.PodIP != "" {
			q.IPs = []string{p.Status.PodIP}
		}
		for _, cs := range append(p.Status.ContainerStatuses, p.Status.InitContainerStatuses...) {
			if _, id, ok := strings.Cut(cs.ContainerID, "://"); ok && id != "" {
				q.Containers[id] = cs.Name
			}
		}
		out = append(out, q)
	}
	return out, nil
}

// workload names the controller that owns a pod: a ReplicaSet stands for
// its Deployment (its name less the pod-template-hash suffix). A pod without
// a usable owner is its own workload.
func workload(p *pod) string {
	if w := owner(p); w != "" {
		return w
	}
	return p.Metadata.Name
}

func owner(p *pod) string {
	for _, o := range p.Metadata.OwnerReferences {
		if o.Controller != nil && !*o.Controller {
			continue
		}
		switch o.Kind {
		case "ReplicaSet":
			if h := p.Metadata.Labels["pod-template-hash"]; h != "" {
				if name, ok := strings.CutSuffix(o.Name, "-"+h); ok {
					return name
				}
			}
			if i := strings.LastIndexByte(o.Name, '-'); i > 0 {
				return o.Name[:i]
			}
			return o.Name
		default:
			return o.Name
		}
	}
	return ""
}
