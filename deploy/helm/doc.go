// Package helm holds caretaker's Helm chart (caretaker/: the agents'
// DaemonSet, the servers' StatefulSet and what they need) and its tests:
// the chart rendered with the Helm SDK for the default values and the edge
// ones, every object decoded strictly into its Kubernetes type and checked
// against the security and availability policy, the servers' server.yml
// loaded by caretaker's own configuration loader, `helm lint`, and the
// plain manifests of deploy/kubernetes kept equal to the chart's default
// rendering (go test ./deploy/helm -update rewrites them).
//
// It has no code outside its tests.
package helm
