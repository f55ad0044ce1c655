# bazel-cache Module - NetworkPolicy
#
# Ingress: the cache ports (HTTP 8080, gRPC 9092) from pods in namespaces
# labelled client_namespace_labels, the HTTP port (/metrics) from the
# monitoring namespace, the gRPC port from the ingress controller when the
# Ingress is enabled. Kubelet probes come from the node, which NetworkPolicy
# implementations let through.
#
# Egress: DNS, and S3/MinIO only. Policies see pod addresses after the
# Service is resolved, so S3 is selected by its pods' namespace (and labels)
# and their port, or by CIDR for S3 outside the cluster.

locals {
  s3_host       = split(":", var.s3_endpoint)[0]
  s3_host_parts = split(".", local.s3_host)
  s3_port = (
    var.s3_target_port != null ? var.s3_target_port :
    length(split(":", var.s3_endpoint)) > 1 ? tonumber(split(":", var.s3_endpoint)[1]) :
    var.s3_disable_ssl ? 80 : 443
  )
  # minio.attic-cache.svc.cluster.local -> attic-cache
  s3_namespace = (
    var.s3_namespace != null ? var.s3_namespace :
    length(local.s3_host_parts) >= 3 ? (local.s3_host_parts[2] == "svc" ? local.s3_host_parts[1] : null) :
    null
  )
}

resource "kubernetes_network_policy" "main" {
  count = var.enable_network_policy ? 1 : 0

  metadata {
    name      = var.name
    namespace = var.namespace
    labels    = local.labels
  }

  spec {
    pod_selector {
      match_labels = local.selector_labels
    }

    policy_types = ["Ingress", "Egress"]

    # Build clients (GitLab runners, developer tooling in the cluster)
    ingress {
      from {
        namespace_selector {
          match_labels = var.client_namespace_labels
        }
      }
      ports {
        port     = local.http_port
        protocol = "TCP"
      }
      ports {
        port     = local.grpc_port
        protocol = "TCP"
      }
    }

    # Prometheus scrapes /metrics on the HTTP port
    ingress {
      from {
        namespace_selector {
          match_labels = {
            "kubernetes.io/metadata.name" = var.monitoring_namespace
          }
        }
      }
      ports {
        port     = local.http_port
        protocol = "TCP"
      }
    }

    # The ingress controller forwards external gRPC
    dynamic "ingress" {
      for_each = var.enable_ingress ? [var.ingress_controller_namespace] : []
      content {
        from {
          namespace_selector {
            match_labels = {
              "kubernetes.io/metadata.name" = ingress.value
            }
          }
        }
        ports {
          port     = local.grpc_port
          protocol = "TCP"
        }
      }
    }

    # Cluster DNS, to resolve the S3 endpoint
    egress {
      to {
        namespace_selector {
          match_labels = {
            "kubernetes.io/metadata.name" = var.dns_namespace
          }
        }
        pod_selector {
          match_labels = var.dns_pod_labels
        }
      }
      ports {
        port     = 53
        protocol = "UDP"
      }
      ports {
        port     = 53
        protocol = "TCP"
      }
    }

    # S3/MinIO inside the cluster
    dynamic "egress" {
      for_each = local.s3_namespace != null ? [local.s3_namespace] : []
      content {
        to {
          namespace_selector {
            match_labels = {
              "kubernetes.io/metadata.name" = egress.value
            }
          }
          pod_selector {
            match_labels = var.s3_pod_labels
          }
        }
        ports {
          port     = local.s3_port
          protocol = "TCP"
        }
      }
    }

    # S3 outside the cluster
    dynamic "egress" {
      for_each = length(var.s3_egress_cidrs) > 0 ? [var.s3_egress_cidrs] : []
      content {
        dynamic "to" {
          for_each = egress.value
          content {
            ip_block {
              cidr = to.value
            }
          }
        }
        ports {
          port     = local.s3_port
          protocol = "TCP"
        }
      }
    }
  }

  lifecycle {
    precondition {
      condition     = local.s3_namespace != null || length(var.s3_egress_cidrs) > 0
      error_message = "The NetworkPolicy cannot tell where S3 is: set s3_namespace (S3/MinIO in the cluster), s3_egress_cidrs (outside it), or enable_network_policy = false."
    }
  }
}
