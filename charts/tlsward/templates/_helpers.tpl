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
