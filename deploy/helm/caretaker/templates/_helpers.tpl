{{/* The chart's name. */}}
{{- define "caretaker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object's name: the release name, with the chart's
name unless it already holds it. */}}
{{- define "caretaker.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "caretaker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "caretaker.labels" -}}
helm.sh/chart: {{ include "caretaker.chart" . }}
app.kubernetes.io/name: {{ include "caretaker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: caretaker
{{- end -}}

{{/* Selector labels of the server's pods. */}}
{{- define "caretaker.server.selectorLabels" -}}
app.kubernetes.io/name: {{ include "caretaker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{/* Selector labels of the agents' pods. */}}
{{- define "caretaker.agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "caretaker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "caretaker.server.name" -}}{{ include "caretaker.fullname" . }}-server{{- end -}}
{{- define "caretaker.server.headless" -}}{{ include "caretaker.fullname" . }}-server-headless{{- end -}}
{{- define "caretaker.agent.name" -}}{{ include "caretaker.fullname" . }}-agent{{- end -}}

{{- define "caretaker.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The Secret holding a token: caretaker.tokenSecret (dict "root" $ "name" "api"). */}}
{{- define "caretaker.tokenSecret" -}}
{{- $t := index .root.Values.tokens .name -}}
{{- if and $t.existingSecret $t.value -}}
{{- fail (printf "tokens.%s: set existingSecret or value, not both" .name) -}}
{{- end -}}
{{- $t.existingSecret | default (printf "%s-%s-token" (include "caretaker.fullname" .root) .name) -}}
{{- end -}}

{{- define "caretaker.serverTLSSecret" -}}
{{- .Values.tls.serverSecret | default (printf "%s-server-tls" (include "caretaker.fullname" .)) -}}
{{- end -}}
{{- define "caretaker.agentTLSSecret" -}}
{{- .Values.tls.agentSecret | default (printf "%s-agent-tls" (include "caretaker.fullname" .)) -}}
{{- end -}}

{{/* The security context of every container but the agent's: a non-root
user, nothing to write but its volumes, no capability, no way to gain one,
the runtime's default seccomp profile. */}}
{{- define "caretaker.restrictedSecurityContext" -}}
runAsUser: 65532
runAsGroup: 65532
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Where the server's files are, in its containers. */}}
{{- define "caretaker.server.paths" -}}
config: /run/caretaker/config/server.yml
policy: /etc/caretaker/policy/policy.yml
secrets: /run/caretaker/secrets
secretsIn: /run/caretaker/secrets-in
tls: /etc/caretaker/tls
etcdTLS: /etc/caretaker/etcd-tls
data: /var/lib/caretaker
{{- end -}}

{{/* server.yml, built from the values. Each replica's cluster.name and
advertise_url hold @POD_NAME@, which the config init container replaces
with the pod's name. */}}
{{- define "caretaker.server.config" -}}
{{- $p := include "caretaker.server.paths" . | fromYaml -}}
{{- $cfg := dict "data_dir" $p.data -}}
{{- $_ := set $cfg "api" (dict "token_file" (printf "%s/api.token" $p.secrets)) -}}
{{- $agents := dict "token_file" (printf "%s/agent.token" $p.secrets) -}}
{{- if .Values.tls.enabled -}}
{{- $_ := set $agents "tls" (dict "ca_file" (printf "%s/ca.crt" $p.tls) "cert_file" (printf "%s/tls.crt" $p.tls) "key_file" (printf "%s/tls.key" $p.tls)) -}}
{{- end -}}
{{- $_ := set $cfg "agents" $agents -}}
{{- if .Values.server.policy -}}
{{- $_ := set $cfg "remediation" (dict "policy_file" $p.policy) -}}
{{- end -}}
{{- if .Values.tokens.webhook.enabled -}}
{{- $rem := $cfg.remediation | default dict -}}
{{- $_ := set $rem "webhook" (dict "token_file" (printf "%s/webhook.token" $p.secrets)) -}}
{{- $_ := set $cfg "remediation" $rem -}}
{{- end -}}
{{- if .Values.server.hosts -}}
{{- $_ := set $cfg "hosts" .Values.server.hosts -}}
{{- end -}}
{{- if .Values.server.ha.enabled -}}
{{- $etcd := dict "endpoints" .Values.server.ha.etcd.endpoints "prefix" .Values.server.ha.etcd.prefix -}}
{{- if .Values.server.ha.etcd.tlsSecret -}}
{{- $etls := dict "ca_file" (printf "%s/ca.crt" $p.etcdTLS) -}}
{{- if .Values.server.ha.etcd.clientCertificate -}}
{{- $_ := set $etls "cert_file" (printf "%s/tls.crt" $p.etcdTLS) -}}
{{- $_ := set $etls "key_file" (printf "%s/tls.key" $p.etcdTLS) -}}
{{- end -}}
{{- $_ := set $etcd "tls" $etls -}}
{{- end -}}
{{- $url := printf "http://@POD_NAME@.%s.%s.svc:%v" (include "caretaker.server.headless" .) .Release.Namespace .Values.server.port -}}
{{- $_ := set $cfg "cluster" (dict "name" "@POD_NAME@" "advertise_url" $url "lease_ttl" .Values.server.ha.leaseTTL "etcd" $etcd) -}}
{{- end -}}
{{- toYaml (mergeOverwrite $cfg (deepCopy .Values.server.config)) -}}
{{- end -}}

{{/* The agent's web config (exporter-toolkit), with tls.enabled. */}}
{{- define "caretaker.agent.webConfig" -}}
tls_server_config:
  cert_file: /etc/caretaker/tls/tls.crt
  key_file: /etc/caretaker/tls/tls.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: /etc/caretaker/tls/ca.crt
  client_allowed_sans: [{{ .Values.tls.serverSAN | quote }}]
  min_version: TLS12
{{- end -}}
