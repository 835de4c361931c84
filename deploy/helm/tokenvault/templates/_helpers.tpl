{{- define "tokenvault.labels" -}}
app.kubernetes.io/name: {{ .Values.app.name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "tokenvault.selector" -}}
app.kubernetes.io/name: {{ .Values.app.name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "tokenvault.gomemlimit" -}}
{{- div (mul (trimSuffix "Mi" .Values.resources.limits.memory | atoi) .Values.goMemLimitPercent) 100 -}}MiB
{{- end -}}
{{- define "tokenvault.config" -}}
grpc_addr: 127.0.0.1:7070
public_addr: 0.0.0.0:7071
health_addr: 0.0.0.0:7072
metrics_addr: 0.0.0.0:7073
allow_non_loopback: true
public_url: {{ .Values.publicURL | quote }}
{{- if eq .Values.mode "many" }}
store:
  kind: etcd
  endpoints: {{ toJson .Values.etcd.endpoints }}
  prefix: {{ .Values.etcd.prefix | quote }}
  tls:
    ca_file: /etc/tokenvault/etcd/ca.crt
    cert_file: /etc/tokenvault/etcd/tls.crt
    key_file: /etc/tokenvault/etcd/tls.key
{{- else }}
data_dir: /var/lib/tokenvault/data
{{- end }}
master_key_file: /etc/tokenvault/secrets/master-key
return_to: {{ toJson .Values.returnTo }}
auth:
  unix_socket:
    path: /run/tokenvault/grpc.sock
    mode: "0666"
    peers:
      - {uid: {{ .Values.app.uid }}, role: application}
providers: {{ toJson .Values.providers }}
{{- end -}}
