{{/*
Sidecar mode: named templates an application chart includes to run purge-service in its own pod,
listening on 127.0.0.1 (only the pod's containers reach it). Call them with this chart's scope,
e.g. (index .Subcharts "purge-service") when purge-service is a dependency of the application chart:

  initContainers:                       # native sidecar (Kubernetes 1.29+): starts first, stops last
    {{- include "purge-service.sidecar.nativeContainer" (index .Subcharts "purge-service") | nindent 4 }}
  containers:                           # or a classic sidecar container
    {{- include "purge-service.sidecar.container" (index .Subcharts "purge-service") | nindent 4 }}
  volumes:
    {{- include "purge-service.sidecar.volumes" (index .Subcharts "purge-service") | nindent 4 }}
  terminationGracePeriodSeconds: {{ include "purge-service.sidecar.terminationGracePeriodSeconds" (index .Subcharts "purge-service") }}
*/}}

{{/* A classic sidecar: one more entry of the pod's `containers`. */}}
{{- define "purge-service.sidecar.container" -}}
{{- include "purge-service.containerItem" (dict "root" . "listenHost" "127.0.0.1") }}
{{- end }}

{{/* A native sidecar: an `initContainers` entry with restartPolicy Always. */}}
{{- define "purge-service.sidecar.nativeContainer" -}}
{{- include "purge-service.containerItem" (dict "root" . "listenHost" "127.0.0.1") }}
  restartPolicy: Always
{{- end }}

{{/* The volumes the container mounts: the rendered config and the secretFiles Secrets. */}}
{{- define "purge-service.sidecar.volumes" -}}
{{- include "purge-service.volumes" . }}
{{- end }}

{{/* At least this grace period for the pod, so the service drains before it is killed. */}}
{{- define "purge-service.sidecar.terminationGracePeriodSeconds" -}}
{{- add (mul 2 (int .Values.drainTimeoutSeconds)) 10 }}
{{- end }}
