# bazel-cache Module - Prometheus Monitoring
#
# The Prometheus Operator names the scrape job after the Service, which is
# var.name: every expression selects job="${var.name}". Every metric queried
# here is exported by the server (tests/s3/deploy/monitoring.rs checks against a running
# one); the request-level series need enable_metrics (enable_endpoint_metrics).

locals {
  job = "job=\"${var.name}\""
  # Cache requests only: readiness probes (/status)
  # and scrapes (/metrics) are counted too, under their own handler.
  cache_requests = "${local.job},handler!~\"status|metrics\""
}

# =============================================================================
# ServiceMonitor
# =============================================================================

resource "kubectl_manifest" "service_monitor" {
  count = var.enable_metrics && var.create_service_monitor ? 1 : 0

  yaml_body = yamlencode({
    apiVersion = "monitoring.coreos.com/v1"
    kind       = "ServiceMonitor"
    metadata = {
      name      = "${var.name}-metrics"
      namespace = var.namespace
      labels = merge(local.labels, {
        "prometheus" = var.prometheus_release_label
      })
    }
    spec = {
      selector = {
        matchLabels = local.selector_labels
      }
      endpoints = [
        {
          port     = "http"
          interval = "30s"
          path     = "/metrics"
        }
      ]
      namespaceSelector = {
        matchNames = [var.namespace]
      }
    }
  })
}

# =============================================================================
# PrometheusRule for Alerts
# =============================================================================

resource "kubectl_manifest" "prometheus_rules" {
  count = var.enable_metrics && var.create_service_monitor ? 1 : 0

  yaml_body = yamlencode({
    apiVersion = "monitoring.coreos.com/v1"
    kind       = "PrometheusRule"
    metadata = {
      name      = "${var.name}-alerts"
      namespace = var.namespace
      labels = merge(local.labels, {
        "prometheus" = var.prometheus_release_label
      })
    }
    spec = {
      groups = [
        {
          name = "${var.name}.rules"
          rules = [
            {
              alert = "BazelCacheDown"
              expr  = "up{${local.job}} == 0"
              for   = "5m"
              labels = {
                severity = "critical"
              }
              annotations = {
                summary     = "Bazel cache ${var.name} is down"
                description = "Bazel cache ${var.name} in namespace ${var.namespace} has been unreachable for more than 5 minutes."
              }
            },
            {
              # up == 0 says nothing once no target is left to scrape.
              alert = "BazelCacheAbsent"
              expr  = "absent(up{${local.job}})"
              for   = "10m"
              labels = {
                severity = "critical"
              }
              annotations = {
                summary     = "Bazel cache ${var.name} has no scraped replica"
                description = "Prometheus has not scraped any replica of ${var.name} in namespace ${var.namespace} for 10 minutes (no pod, or the ServiceMonitor selects nothing)."
              }
            },
            {
              # One p95 over all series of the job (per-series quantiles of
              # rarely used code/method combinations are noise).
              alert = "BazelCacheHighLatency"
              expr  = "histogram_quantile(0.95, sum by (le) (rate(bazel_remote_http_request_duration_seconds_bucket{${local.cache_requests}}[5m]))) > 1"
              for   = "10m"
              labels = {
                severity = "warning"
              }
              annotations = {
                summary     = "Bazel cache p95 latency is high"
                description = "Bazel cache ${var.name} has p95 latency > 1s for more than 10 minutes."
              }
            },
            {
              # Sums on both sides: a ratio of series with the same labels
              # would divide the 5xx rate by itself.
              alert = "BazelCacheHighErrorRate"
              expr  = "sum(rate(bazel_remote_http_request_total{${local.cache_requests},code=~\"5..\"}[5m])) / sum(rate(bazel_remote_http_request_total{${local.cache_requests}}[5m])) > 0.05"
              for   = "5m"
              labels = {
                severity = "warning"
              }
              annotations = {
                summary     = "Bazel cache error rate is high"
                description = "Bazel cache ${var.name} has error rate > 5% for more than 5 minutes."
              }
            },
            {
              # Bazel talks gRPC to the cache; the HTTP alert does not see it.
              alert = "BazelCacheGrpcErrors"
              expr  = "sum(rate(grpc_server_handled_total{${local.job},grpc_code=~\"Unknown|Internal|Unavailable|DataLoss|ResourceExhausted\"}[5m])) / sum(rate(grpc_server_handled_total{${local.job}}[5m])) > 0.05"
              for   = "5m"
              labels = {
                severity = "warning"
              }
              annotations = {
                summary     = "Bazel cache gRPC error rate is high"
                description = "More than 5% of the gRPC calls to ${var.name} have failed with a server error for more than 5 minutes."
              }
            },
            {
              alert = "BazelCacheS3Errors"
              expr  = "rate(bazel_remote_s3_requests_total{${local.job},status=\"error\"}[5m]) > 1"
              for   = "5m"
              labels = {
                severity = "warning"
              }
              annotations = {
                summary     = "Bazel cache S3 backend errors"
                description = "Bazel cache ${var.name} has S3 backend errors for more than 5 minutes."
              }
            },
            {
              # A full upload queue drops uploads: the blobs stay local only.
              alert = "BazelCacheS3UploadsDropped"
              expr  = "increase(bazel_remote_s3_uploads_dropped_total{${local.job}}[15m]) > 0"
              for   = "1m"
              labels = {
                severity = "warning"
              }
              annotations = {
                summary     = "Bazel cache drops S3 uploads"
                description = "The S3 upload queue of ${var.name} is full (max_queued_uploads): new blobs are not shared with the other replicas."
              }
            },
            {
              # The server's limits turning clients away, for 10 minutes on
              # end: a hostile or broken client, or limits too tight for the
              # builds. Timeouts of idle connections are routine and left out.
              alert = "BazelCacheLimitsHit"
              expr  = "sum(rate(bazel_cache_connections_refused_total{${local.job}}[5m])) + sum(rate(bazel_cache_connections_floods_total{${local.job}}[5m])) + sum(rate(bazel_cache_uploads_cut_total{${local.job}}[5m])) + sum(rate(bazel_cache_memory_refused_total{${local.job}}[5m])) > 0"
              for   = "10m"
              labels = {
                severity = "warning"
              }
              annotations = {
                summary     = "Bazel cache ${var.name} is refusing or cutting clients"
                description = "For 10 minutes ${var.name} in namespace ${var.namespace} has refused connections (max_connections), closed HTTP/2 floods, cut upload bodies (stalled or below body_min_rate) or refused requests for buffer memory (max_buffer_memory). The bazel_cache_* series (dashboard row Limits) say which; raise that limit if the clients are legitimate builds."
              }
            }
          ]
        }
      ]
    }
  })
}

# =============================================================================
# Grafana dashboard (optional)
# =============================================================================

# The Grafana sidecar (kube-prometheus-stack) loads every ConfigMap carrying
# its label. dashboards/bazel-cache.json links to deploy/grafana/, the one copy
# of the dashboard (also the flake's grafana-dashboard output).
resource "kubernetes_config_map" "grafana_dashboard" {
  count = var.create_grafana_dashboard ? 1 : 0

  metadata {
    name      = "${var.name}-grafana-dashboard"
    namespace = var.grafana_dashboard_namespace != null ? var.grafana_dashboard_namespace : var.namespace
    labels    = merge(local.labels, var.grafana_dashboard_labels)
  }

  data = {
    "bazel-cache.json" = file("${path.module}/dashboards/bazel-cache.json")
  }
}
