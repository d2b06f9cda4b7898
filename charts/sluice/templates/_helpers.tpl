{{/* Chart name, cut to the 63 characters a label value allows. */}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object name: <release>-sluice, or the release name when it already says sluice. */}}
{{- define "sluice.fullname" -}}
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

{{- define "sluice.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluice
{{- end }}

{{/* Selector labels of one component (operator or nats); they never change across upgrades. */}}
{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sluice.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The sidecar image the operator injects: operator.proxyImage, falling back to the chart's image. */}}
{{- define "sluice.proxyImage" -}}
{{- $repo := default .Values.image.repository .Values.operator.proxyImage.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.operator.proxyImage.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{- define "sluice.natsName" -}}
{{- printf "%s-nats" (include "sluice.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The NATS the operator hands to function proxies: the chart's own, nats.url, or none (map off). */}}
{{- define "sluice.natsUrl" -}}
{{- if and .Values.nats.enabled .Values.nats.url }}
{{- fail "nats.enabled and nats.url exclude each other: set nats.enabled=false to use an existing NATS at nats.url" }}
{{- else if .Values.nats.enabled }}
{{- printf "nats://%s.%s.svc:4222" (include "sluice.natsName" .) .Release.Namespace }}
{{- else }}
{{- .Values.nats.url }}
{{- end }}
{{- end }}

{{- define "sluice.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ if kindIs "string" . }}{{ . }}{{ else }}{{ .name }}{{ end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The activator runs when enabled and there is NATS to hear the functions' load on. */}}
{{- define "sluice.activatorEnabled" -}}
{{- if and .Values.activator.enabled (include "sluice.natsUrl" .) }}true{{ end }}
{{- end }}

{{- define "sluice.activatorName" -}}
{{- printf "%s-activator" (include "sluice.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "true" when the operator locks NATS down: a NATS is configured and nats.auth.enabled. */}}
{{- define "sluice.natsAuth" -}}
{{- if and (include "sluice.natsUrl" .) .Values.nats.auth.enabled }}true{{ end }}
{{- end }}

{{/* The Secret with the NATS keys and trust.conf, made by the operator on its first start. */}}
{{- define "sluice.natsAuthSecret" -}}
{{- printf "%s-nats-auth" (include "sluice.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
