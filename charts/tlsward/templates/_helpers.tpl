{{- define "tlsward.name" -}}{{ .Release.Name }}-tlsward{{- end -}}
{{- define "tlsward.labels" -}}
app.kubernetes.io/name: tlsward
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "tlsward.selector" -}}
app.kubernetes.io/name: tlsward
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{/* The gateway namespace: one value, config.gateway.namespace (tlsward's own default). */}}
{{- define "tlsward.gatewayNamespace" -}}{{ (.Values.config.gateway | default dict).namespace | default "istio-system" }}{{- end -}}
{{/* The HTTP-01 solver Service of this release, as the Gateway routes challenges to it. */}}
{{- define "tlsward.solverService" -}}{{ include "tlsward.name" . }}-acme-solver{{- end -}}
