{{/* Chart name. */}}
{{- define "seqclust.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped name: <release>-seqclust unless the release already says seqclust. */}}
{{- define "seqclust.fullname" -}}
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

{{- define "seqclust.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "seqclust.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "worker"). */}}
{{- define "seqclust.selector" -}}
app.kubernetes.io/name: {{ include "seqclust.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "seqclust.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "seqclust.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "seqclust.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* etcd client URLs as a TOML array. */}}
{{- define "seqclust.etcdEndpoints" -}}
{{- if eq .Values.etcd.mode "bundled" -}}
["http://{{ include "seqclust.fullname" . }}-etcd:2379"]
{{- else -}}
{{- if not .Values.etcd.endpoints -}}
{{- fail "etcd.mode=external needs etcd.endpoints" -}}
{{- end -}}
[{{- range $i, $e := .Values.etcd.endpoints }}{{ if $i }}, {{ end }}{{ $e | quote }}{{ end -}}]
{{- end -}}
{{- end -}}

{{/* Environment shared by coordinator and worker pods: object store credentials. */}}
{{- define "seqclust.storageEnv" -}}
{{- with .Values.objectStore.s3 }}
- name: AWS_REGION
  value: {{ .region | quote }}
{{- if .endpoint }}
- name: AWS_ENDPOINT
  value: {{ .endpoint | quote }}
{{- end }}
{{- if .allowHttp }}
- name: AWS_ALLOW_HTTP
  value: "true"
{{- end }}
{{- if .existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .secretAccessKeyKey }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Volumes of coordinator and worker pods: include with (dict "ctx" $ "role" "worker"). */}}
{{- define "seqclust.volumes" -}}
{{- $v := .ctx.Values -}}
- name: config
  configMap:
    name: {{ include "seqclust.fullname" .ctx }}
- name: tmp
  emptyDir: {}
{{- if $v.tls.enabled }}
- name: tls
  secret:
    {{- if eq .role "coordinator" }}
    secretName: {{ $v.tls.existingSecret }}
    {{- else if $v.tls.mutual }}
    secretName: {{ $v.tls.workerSecret }}
    {{- else }}
    # workers verify the coordinator: the CA only, never its key
    secretName: {{ $v.tls.existingSecret }}
    items:
      - key: ca.crt
        path: ca.crt
    {{- end }}
{{- end }}
{{- if $v.auth.existingSecret }}
- name: auth
  secret:
    secretName: {{ $v.auth.existingSecret }}
    items:
      - key: {{ $v.auth.key }}
        path: tokens
{{- end }}
{{- if $v.etcd.auth.existingSecret }}
- name: etcd-auth
  secret:
    secretName: {{ $v.etcd.auth.existingSecret }}
    items:
      - key: {{ $v.etcd.auth.passwordKey }}
        path: password
{{- end }}
{{- end -}}

{{- define "seqclust.volumeMounts" -}}
- name: config
  mountPath: /etc/seqclust
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.etcd.auth.existingSecret }}
- name: etcd-auth
  mountPath: /var/run/secrets/seqclust/etcd
  readOnly: true
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/seqclust/tls
  readOnly: true
{{- end }}
{{- if .Values.auth.existingSecret }}
- name: auth
  mountPath: /var/run/secrets/seqclust/auth
  readOnly: true
{{- end }}
{{- end -}}
