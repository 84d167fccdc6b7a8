{{/* Names and labels. */}}
{{- define "stream-infer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stream-infer.fullname" -}}
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

{{- define "stream-infer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stream-infer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "stream-infer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "stream-infer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: inference
{{- end }}

{{/*
The `helm test` pod. Not the selector labels: the Service, the PDB and the workload's selector
(a ReplicaSet would adopt it) must never match it.
*/}}
{{- define "stream-infer.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "stream-infer.name" . }}
app.kubernetes.io/component: test
stream-infer.io/test-of: {{ .Release.Name }}
{{- end }}

{{- define "stream-infer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stream-infer.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "stream-infer.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "stream-infer.metricsPort" -}}
{{- $m := .Values.config.metrics | default dict }}
{{- $m.port | default 9100 | int }}
{{- end }}

{{/*
The settings file: .Values.config plus what the chart derives from kafkaAuth. A key the user set
in config wins over the derived one.
*/}}
{{- define "stream-infer.settings" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $kafka := deepCopy (get $cfg "kafka" | default dict) }}
{{- $auth := .Values.kafkaAuth }}
{{- if $auth.tls.secretName }}
{{- $_ := set $kafka "ssl_cafile" (get $kafka "ssl_cafile" | default (printf "%s/%s" $auth.tls.mountPath $auth.tls.caKey)) }}
{{- if $auth.tls.certKey }}
{{- $_ := set $kafka "ssl_certfile" (get $kafka "ssl_certfile" | default (printf "%s/%s" $auth.tls.mountPath $auth.tls.certKey)) }}
{{- end }}
{{- if $auth.tls.keyKey }}
{{- $_ := set $kafka "ssl_keyfile" (get $kafka "ssl_keyfile" | default (printf "%s/%s" $auth.tls.mountPath $auth.tls.keyKey)) }}
{{- end }}
{{- end }}
{{- if $auth.saslPasswordFile.secretName }}
{{- $_ := set $kafka "sasl_password_file" (printf "%s/%s" $auth.saslPasswordFile.mountPath $auth.saslPasswordFile.key) }}
{{- end }}
{{- $_ := set $cfg "kafka" $kafka }}
{{- if $cfg.models }}
{{- /* several models (docs/models.md): each entry names its artifact; the single model's default goes */}}
{{- $_ := unset $cfg "model" }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/*
Cross-field checks the JSON schema cannot express. Included by the workload so that a bad
combination fails `helm install` / `helm template` with a message that names the values.
*/}}
{{- define "stream-infer.validate" -}}
{{- $v := .Values }}
{{- $grace := $v.config.shutdown_grace_s | default 30 | float64 }}
{{- if le (float64 $v.terminationGracePeriodSeconds) $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be longer than config.shutdown_grace_s (%v): the kubelet would kill the service before it has drained and committed" $v.terminationGracePeriodSeconds $grace) }}
{{- end }}
{{- $parts := int $v.inputPartitions }}
{{- if and (not $v.autoscaling.enabled) (not $v.keda.enabled) (gt (int $v.replicaCount) $parts) }}
{{- fail (printf "replicaCount (%d) is more than inputPartitions (%d): the extra pods would get no partition" (int $v.replicaCount) $parts) }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.maxReplicas) $parts) }}
{{- fail (printf "autoscaling.maxReplicas (%d) is more than inputPartitions (%d)" (int $v.autoscaling.maxReplicas) $parts) }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas is more than autoscaling.maxReplicas" }}
{{- end }}
{{- if $v.keda.enabled }}
{{- if $v.autoscaling.enabled }}
{{- fail "keda.enabled and autoscaling.enabled are exclusive: KEDA manages its own HPA" }}
{{- end }}
{{- if gt (int $v.keda.maxReplicaCount) $parts }}
{{- fail (printf "keda.maxReplicaCount (%d) is more than inputPartitions (%d): consumers beyond the partition count sit idle and lag-based scaling would keep adding them" (int $v.keda.maxReplicaCount) $parts) }}
{{- end }}
{{- if gt (int $v.keda.minReplicaCount) (int $v.keda.maxReplicaCount) }}
{{- fail "keda.minReplicaCount is more than keda.maxReplicaCount" }}
{{- end }}
{{- end }}
{{- if ne $v.model.source "image" }}
{{- $artifacts := dict }}
{{- if $v.config.models }}
{{- range $i, $m := $v.config.models }}
{{- $_ := set $artifacts (printf "config.models[%d].artifact" $i) (toString $m.artifact) }}
{{- end }}
{{- else }}
{{- $_ := set $artifacts "config.model.artifact" (toString $v.config.model.artifact) }}
{{- end }}
{{- range $key, $artifact := $artifacts }}
{{- if not (hasPrefix (printf "%s/" (trimSuffix "/" $v.model.mountPath)) $artifact) }}
{{- fail (printf "%s (%s) must lie under model.mountPath (%s) when model.source is %s" $key $artifact $v.model.mountPath $v.model.source) }}
{{- end }}
{{- end }}
{{- if and (eq $v.model.source "volume") (not $v.model.volume) }}
{{- fail "model.source is volume but model.volume is empty (give a volume source, e.g. persistentVolumeClaim)" }}
{{- end }}
{{- if and (eq $v.model.source "initContainer") (not $v.model.initContainer.image) }}
{{- fail "model.source is initContainer but model.initContainer.image is empty" }}
{{- end }}
{{- end }}
{{- $kafka := $v.config.kafka | default dict }}
{{- if hasKey $kafka "sasl_password" }}
{{- fail "config.kafka.sasl_password must not be in values (it would land in a ConfigMap): use kafkaAuth.saslPassword or kafkaAuth.saslPasswordFile" }}
{{- end }}
{{- if hasKey $kafka "ssl_password" }}
{{- fail "config.kafka.ssl_password must not be in values (it would land in a ConfigMap): use kafkaAuth.sslKeyPassword" }}
{{- end }}
{{- if and $v.kafkaAuth.saslPassword.secretName $v.kafkaAuth.saslPasswordFile.secretName }}
{{- fail "set one of kafkaAuth.saslPassword and kafkaAuth.saslPasswordFile, not both" }}
{{- end }}
{{- $persist := $v.engineCache.persistence }}
{{- if and $persist.enabled (not $v.engineCache.enabled) }}
{{- fail "engineCache.persistence.enabled needs engineCache.enabled" }}
{{- end }}
{{- if and $v.engineCache.enabled $persist.enabled (eq $v.workload.kind "Deployment") (not $persist.existingClaim) }}
{{- fail "engineCache.persistence.existingClaim must be set when workload.kind is Deployment: a Deployment cannot give each pod its own PVC (a StatefulSet does, with volumeClaimTemplates)" }}
{{- end }}
{{- $delivery := $v.config.delivery | default dict }}
{{- if and (eq $v.workload.kind "Deployment") (eq (toString $delivery.guarantee) "exactly-once") }}
{{- fail "config.delivery.guarantee exactly-once needs workload.kind StatefulSet: transactional ids must be stable per pod" }}
{{- end }}
{{- end }}
