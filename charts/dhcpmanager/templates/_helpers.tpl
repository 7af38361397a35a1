{{/* Chart name, overridable. */}}
{{- define "dhcpmanager.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Object-name prefix. It is also the REST API Service's name: a release called "dhcpmanager"
yields a Service "dhcpmanager", which the MetalLB fork's `url: http://dhcpmanager` expects.
*/}}
{{- define "dhcpmanager.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dhcpmanager.agent.fullname" -}}
{{- printf "%s-agent" (include "dhcpmanager.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dhcpmanager.apiserver.fullname" -}}
{{- printf "%s-apiserver" (include "dhcpmanager.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dhcpmanager.config.name" -}}
{{- printf "%s-config" (include "dhcpmanager.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dhcpmanager.auth.secretName" -}}
{{- if .Values.apiserver.auth.existingSecret }}
{{- .Values.apiserver.auth.existingSecret }}
{{- else }}
{{- printf "%s-auth" (include "dhcpmanager.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "dhcpmanager.auth.secretKey" -}}
{{- if .Values.apiserver.auth.existingSecret }}
{{- .Values.apiserver.auth.existingSecretKey }}
{{- else }}
{{- print "token" }}
{{- end }}
{{- end }}

{{- define "dhcpmanager.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "dhcpmanager.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "dhcpmanager.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dhcpmanager
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component; pass (dict "ctx" $ "component" "agent"). */}}
{{- define "dhcpmanager.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dhcpmanager.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "dhcpmanager.componentLabels" -}}
{{ include "dhcpmanager.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
