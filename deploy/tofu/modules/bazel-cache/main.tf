# bazel-cache Module
#
# Deploys the bazel-cache server (a drop-in bazel-remote replacement) with an
# S3/MinIO backend: each replica keeps a local disk cache in front of one
# shared bucket. Section 2 of the design document, adapted where a real
# cluster needs it; README.md lists every divergence and why.
#
# Usage:
# module "bazel_cache" {
#   source = "../../modules/bazel-cache"
#
#   name      = "bazel-cache"
#   namespace = "attic-cache"
#
#   # MinIO backend (existing in namespace)
#   s3_endpoint = "minio.attic-cache.svc.cluster.local:9000"
#   s3_bucket   = "bazel-cache"
#   s3_secret   = "bazel-cache-s3-credentials"
#
#   # Scaling
#   min_replicas = 2
#   max_replicas = 4
# }

terraform {
  required_version = ">= 1.6.0"

  required_providers {
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.24"
    }
    kubectl = {
      source  = "alekc/kubectl"
      version = "~> 2.0"
    }
  }
}

# =============================================================================
# Locals
# =============================================================================

locals {
  labels = merge(
    {
      "app.kubernetes.io/name"       = var.name
      "app.kubernetes.io/instance"   = "${var.name}-${var.namespace}"
      "app.kubernetes.io/component"  = "build-cache"
      "app.kubernetes.io/part-of"    = "build-infrastructure"
      "app.kubernetes.io/managed-by" = "opentofu"
    },
    var.additional_labels
  )

  selector_labels = {
    "app.kubernetes.io/name"     = var.name
    "app.kubernetes.io/instance" = "${var.name}-${var.namespace}"
  }

  # Service endpoints
  grpc_port = 9092
  http_port = 8080

  # Where the image expects its configuration and data.
  config_dir   = "/etc/bazel-remote"
  data_dir     = "/data"
  htpasswd_dir = "/etc/bazel-remote-auth"

  # max_size is per replica: every pod evicts from its own volume, which the
  # kubelet caps at local_cache_size_gb (the pod is evicted beyond it). The
  # index, the upload queue, uploads in flight and file-system blocks of small
  # entries live on that volume too, hence the 20% left free.
  max_size_gib = var.max_cache_size_gb != null ? var.max_cache_size_gb : var.local_cache_size_gb * 8 / 10

  # The server's configuration (bazel-remote's YAML keys). Keys whose value is
  # null are left out, so optional settings need no second object type.
  config = { for key, value in {
    # Storage configuration
    dir      = local.data_dir
    max_size = local.max_size_gib

    # gRPC settings
    grpc_port = local.grpc_port

    # HTTP settings
    http_address = "0.0.0.0:${local.http_port}"

    # S3/MinIO backend; credentials come from the Secret as environment
    # variables (BAZEL_REMOTE_S3_*), never from this ConfigMap.
    s3_proxy = {
      endpoint           = var.s3_endpoint
      bucket             = var.s3_bucket
      prefix             = var.s3_prefix
      auth_method        = "access_key"
      disable_ssl        = var.s3_disable_ssl
      bucket_lookup_type = var.s3_bucket_lookup_type
      max_idle_conns     = var.s3_max_idle_conns
      update_timestamps  = var.s3_update_timestamps
    }

    # Performance tuning
    num_uploaders      = var.num_uploaders
    max_queued_uploads = var.max_queued_uploads

    # Metrics
    enable_endpoint_metrics = var.enable_metrics

    # Access logging
    access_log_level = var.access_log_level

    # Basic authentication (cache requests only: /status, /metrics and the
    # gRPC health service stay open for probes and Prometheus).
    htpasswd_file               = var.htpasswd_secret != null ? "${local.htpasswd_dir}/htpasswd" : null
    allow_unauthenticated_reads = var.htpasswd_secret != null ? var.allow_unauthenticated_reads : null
  } : key => value if value != null }
}

# =============================================================================
# ConfigMap for the server configuration
# =============================================================================

resource "kubernetes_config_map" "config" {
  metadata {
    name      = "${var.name}-config"
    namespace = var.namespace
    labels    = local.labels
  }

  data = {
    "config.yaml" = yamlencode(local.config)
  }
}

# =============================================================================
# Deployment
# =============================================================================

resource "kubernetes_deployment" "main" {
  wait_for_rollout = var.wait_for_rollout

  metadata {
    name      = var.name
    namespace = var.namespace
    labels    = local.labels
    annotations = {
      "app.kubernetes.io/created-by" = "opentofu"
    }
  }

  spec {
    replicas = var.min_replicas

    selector {
      match_labels = local.selector_labels
    }

    template {
      metadata {
        labels = local.labels
        annotations = {
          "prometheus.io/scrape" = tostring(var.enable_metrics)
          "prometheus.io/port"   = tostring(local.http_port)
          "prometheus.io/path"   = "/metrics"
          # The server reads its configuration once, at start: a changed
          # ConfigMap must roll the pods to take effect.
          "bazel-cache/config-sha256" = sha256(kubernetes_config_map.config.data["config.yaml"])
        }
      }

      spec {
        service_account_name = var.service_account_name
        # The server never talks to the Kubernetes API.
        automount_service_account_token = false
        # After SIGTERM the server stops accepting, gives requests in flight
        # up to 30 s, then closes its store: leave it that long and more.
        termination_grace_period_seconds = 60

        # The image runs as uid/gid 1000; the rest satisfies the "restricted"
        # Pod Security Standard.
        security_context {
          run_as_non_root = true
          run_as_user     = 1000
          run_as_group    = 1000
          fs_group        = 1000
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }

        container {
          name  = "bazel-remote"
          image = var.image
          args  = ["--config_file=${local.config_dir}/config.yaml"]

          port {
            container_port = local.grpc_port
            name           = "grpc"
            protocol       = "TCP"
          }

          port {
            container_port = local.http_port
            name           = "http"
            protocol       = "TCP"
          }

          # S3 credentials from secret
          env {
            name = "BAZEL_REMOTE_S3_ACCESS_KEY_ID"
            value_from {
              secret_key_ref {
                name = var.s3_secret
                key  = "access-key"
              }
            }
          }

          env {
            name = "BAZEL_REMOTE_S3_SECRET_ACCESS_KEY"
            value_from {
              secret_key_ref {
                name = var.s3_secret
                key  = "secret-key"
              }
            }
          }

          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }

          volume_mount {
            name       = "config"
            mount_path = local.config_dir
            read_only  = true
          }

          volume_mount {
            name       = "cache"
            mount_path = local.data_dir
          }

          dynamic "volume_mount" {
            for_each = var.htpasswd_secret != null ? [var.htpasswd_secret] : []
            content {
              name       = "htpasswd"
              mount_path = local.htpasswd_dir
              read_only  = true
            }
          }

          resources {
            requests = {
              cpu    = var.cpu_request
              memory = var.memory_request
              # So the scheduler only places a replica where its cache fits.
              "ephemeral-storage" = "${var.local_cache_size_gb}Gi"
            }
            limits = {
              cpu    = var.cpu_limit
              memory = var.memory_limit
            }
          }

          # Liveness: the gRPC health service (grpc.health.v1, no credentials).
          liveness_probe {
            grpc {
              port = local.grpc_port
            }
            initial_delay_seconds = 10
            period_seconds        = 30
            timeout_seconds       = 5
            failure_threshold     = 3
          }

          # Readiness: nothing listens until the store is open, and the
          # listeners close as soon as a pod drains, so /status answers 200
          # exactly while the pod serves; it never asks for credentials.
          readiness_probe {
            http_get {
              path = "/status"
              port = local.http_port
            }
            initial_delay_seconds = 5
            period_seconds        = 10
            timeout_seconds       = 5
            failure_threshold     = 3
          }
        }

        volume {
          name = "config"
          config_map {
            name = kubernetes_config_map.config.metadata[0].name
          }
        }

        volume {
          name = "cache"
          empty_dir {
            size_limit = "${var.local_cache_size_gb}Gi"
          }
        }

        dynamic "volume" {
          for_each = var.htpasswd_secret != null ? [var.htpasswd_secret] : []
          content {
            name = "htpasswd"
            secret {
              secret_name = volume.value
              items {
                key  = "htpasswd"
                path = "htpasswd"
              }
            }
          }
        }

        # Topology spread for HA
        topology_spread_constraint {
          max_skew           = 1
          topology_key       = "topology.kubernetes.io/zone"
          when_unsatisfiable = "ScheduleAnyway"
          label_selector {
            match_labels = local.selector_labels
          }
        }
      }
    }
  }

  lifecycle {
    ignore_changes = [
      spec[0].replicas, # Managed by HPA
    ]

    precondition {
      condition     = local.max_size_gib < var.local_cache_size_gb
      error_message = "max_cache_size_gb is the per-replica max_size and must be below local_cache_size_gb (the volume also holds the index and the upload queue; the kubelet evicts a pod whose volume outgrows its limit)."
    }

    precondition {
      condition     = length("${var.name}-${var.namespace}") <= 63
      error_message = "name and namespace together (name-namespace, the app.kubernetes.io/instance label) must fit in 63 characters."
    }
  }
}

# =============================================================================
# Service
# =============================================================================

resource "kubernetes_service" "main" {
  metadata {
    name      = var.name
    namespace = var.namespace
    labels    = local.labels
  }

  spec {
    selector = local.selector_labels

    port {
      port        = local.grpc_port
      target_port = local.grpc_port
      name        = "grpc"
      protocol    = "TCP"
    }

    port {
      port        = local.http_port
      target_port = local.http_port
      name        = "http"
      protocol    = "TCP"
    }

    type = "ClusterIP"
  }
}

# =============================================================================
# Ingress (optional, for external gRPC access)
# =============================================================================

resource "kubernetes_ingress_v1" "main" {
  count = var.enable_ingress ? 1 : 0

  metadata {
    name      = var.name
    namespace = var.namespace
    labels    = local.labels
    # No kubernetes.io/ingress.class annotation: the API server refuses an
    # Ingress that has both it and spec.ingressClassName.
    annotations = merge(
      var.cert_manager_issuer != "" ? { "cert-manager.io/cluster-issuer" = var.cert_manager_issuer } : {},
      {
        # gRPC requires HTTP/2
        "nginx.ingress.kubernetes.io/backend-protocol" = "GRPC"
        # ByteStream writes stream whole blobs: no 1 MiB body limit.
        "nginx.ingress.kubernetes.io/proxy-body-size" = "0"
      },
      var.ingress_annotations
    )
  }

  spec {
    ingress_class_name = var.ingress_class

    tls {
      hosts       = [var.ingress_host]
      secret_name = "${var.name}-tls"
    }

    rule {
      host = var.ingress_host
      http {
        path {
          path      = "/"
          path_type = "Prefix"
          backend {
            service {
              name = kubernetes_service.main.metadata[0].name
              port {
                number = local.grpc_port
              }
            }
          }
        }
      }
    }
  }

  lifecycle {
    precondition {
      condition     = var.ingress_host != ""
      error_message = "enable_ingress needs ingress_host."
    }
  }
}
