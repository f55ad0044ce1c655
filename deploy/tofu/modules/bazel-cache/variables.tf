# bazel-cache Module - Variables
#
# The variables of the design document (section 2.3) keep their names, types
# and defaults, so a `module "bazel_cache" { ... }` block written against the
# design applies unchanged. Where a default or a meaning had to change, the
# description says so and README.md explains why.

# =============================================================================
# Required Variables
# =============================================================================

variable "name" {
  description = "Name of the deployment; also the Service, ConfigMap prefix and Prometheus job name"
  type        = string
  default     = "bazel-cache"

  validation {
    # A Service name is an RFC 1035 label: it must start with a letter and
    # fit in 63 characters (the design's pattern also allowed a leading digit,
    # which the API server refuses for the Service).
    condition     = can(regex("^[a-z]([-a-z0-9]*[a-z0-9])?$", var.name)) && length(var.name) <= 63
    error_message = "name must be a lowercase RFC 1035 label: a letter first, then letters, digits or hyphens, not ending in a hyphen, at most 63 characters."
  }
}

variable "namespace" {
  description = "Kubernetes namespace for deployment"
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.namespace)) && length(var.namespace) <= 63
    error_message = "namespace must be a lowercase RFC 1123 label of at most 63 characters."
  }
}

# =============================================================================
# S3/MinIO Configuration
# =============================================================================

variable "s3_endpoint" {
  description = "S3/MinIO endpoint as host:port, without a scheme (e.g., minio.attic-cache.svc.cluster.local:9000)"
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9]([-.A-Za-z0-9]*[A-Za-z0-9])?(:[0-9]{1,5})?$", var.s3_endpoint))
    error_message = "s3_endpoint must be host or host:port without a scheme (use s3_disable_ssl to choose http or https)."
  }
}

variable "s3_bucket" {
  description = "S3/MinIO bucket name for cache storage"
  type        = string
  default     = "bazel-cache"

  validation {
    condition     = can(regex("^[a-z0-9][-.a-z0-9]{1,61}[a-z0-9]$", var.s3_bucket))
    error_message = "s3_bucket must be a valid S3 bucket name: 3 to 63 lowercase letters, digits, dots or hyphens."
  }
}

variable "s3_secret" {
  description = "Kubernetes secret name containing access-key and secret-key"
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$", var.s3_secret)) && length(var.s3_secret) <= 253
    error_message = "s3_secret must be the name of a Secret (a lowercase RFC 1123 subdomain)."
  }
}

variable "s3_prefix" {
  description = "Object prefix within the bucket"
  type        = string
  default     = ""
}

variable "s3_disable_ssl" {
  description = "Disable SSL for S3/MinIO (true for internal MinIO)"
  type        = bool
  default     = true
}

variable "s3_bucket_lookup_type" {
  description = "S3 bucket lookup type: auto, dns, or path"
  type        = string
  default     = "path"

  validation {
    condition     = contains(["auto", "dns", "path"], var.s3_bucket_lookup_type)
    error_message = "s3_bucket_lookup_type must be auto, dns, or path"
  }
}

variable "s3_max_idle_conns" {
  description = "Maximum idle connections to S3"
  type        = number
  default     = 1024

  validation {
    condition     = var.s3_max_idle_conns >= 1 && floor(var.s3_max_idle_conns) == var.s3_max_idle_conns
    error_message = "s3_max_idle_conns must be a whole number of at least 1."
  }
}

variable "s3_update_timestamps" {
  description = "Update object timestamps on cache hit"
  type        = bool
  default     = true
}

# =============================================================================
# Cache Configuration
# =============================================================================

variable "max_cache_size_gb" {
  description = "Per-replica max_size in GiB (each pod evicts from its own disk; S3 is never evicted by the server). Null (the default) derives it from local_cache_size_gb, leaving 20% of the volume for the index, the upload queue and file-system overhead. Must be below local_cache_size_gb."
  type        = number
  default     = null

  validation {
    condition     = var.max_cache_size_gb == null ? true : var.max_cache_size_gb > 0
    error_message = "max_cache_size_gb must be greater than 0 (or null to derive it from local_cache_size_gb)."
  }
}

variable "local_cache_size_gb" {
  description = "Size in GiB of each replica's cache volume (emptyDir size limit and ephemeral-storage request)"
  type        = number
  default     = 10

  validation {
    condition     = var.local_cache_size_gb >= 1 && floor(var.local_cache_size_gb) == var.local_cache_size_gb
    error_message = "local_cache_size_gb must be a whole number of GiB, at least 1."
  }
}

variable "num_uploaders" {
  description = "Number of parallel S3 upload workers"
  type        = number
  default     = 100

  validation {
    condition     = var.num_uploaders >= 1 && floor(var.num_uploaders) == var.num_uploaders
    error_message = "num_uploaders must be a whole number of at least 1."
  }
}

variable "max_queued_uploads" {
  description = "Maximum queued S3 uploads; beyond it new uploads are dropped (the blob stays in the local cache, the client's write still succeeds)"
  type        = number
  default     = 1000000

  validation {
    condition     = var.max_queued_uploads >= 1 && floor(var.max_queued_uploads) == var.max_queued_uploads
    error_message = "max_queued_uploads must be a whole number of at least 1."
  }
}

# =============================================================================
# Container Configuration
# =============================================================================

variable "image" {
  description = "bazel-cache container image (the flake's oci-image output, pushed to a registry the cluster can pull from)"
  type        = string
  default     = "bazel-cache:0.1.0"

  validation {
    condition     = length(trimspace(var.image)) > 0
    error_message = "image must not be empty."
  }
}

variable "cpu_request" {
  description = "CPU request per replica"
  type        = string
  default     = "250m"
}

variable "cpu_limit" {
  description = "CPU limit per replica"
  type        = string
  default     = "1000m"
}

variable "memory_request" {
  description = "Memory request per replica"
  type        = string
  default     = "512Mi"
}

variable "memory_limit" {
  description = "Memory limit per replica"
  type        = string
  default     = "2Gi"
}

variable "service_account_name" {
  description = "Kubernetes service account name"
  type        = string
  default     = "default"
}

variable "wait_for_rollout" {
  description = "Wait for deployment rollout to complete"
  type        = bool
  default     = true
}

# =============================================================================
# Scaling Configuration
# =============================================================================

variable "min_replicas" {
  description = "Minimum number of replicas"
  type        = number
  default     = 2

  validation {
    condition     = var.min_replicas >= 1
    error_message = "min_replicas must be at least 1"
  }
}

variable "max_replicas" {
  description = "Maximum number of replicas for HPA (at least min_replicas)"
  type        = number
  default     = 4

  validation {
    condition     = var.max_replicas >= 1
    error_message = "max_replicas must be at least 1"
  }
}

variable "cpu_target_percent" {
  description = "Target CPU utilization for HPA"
  type        = number
  default     = 70

  validation {
    condition     = var.cpu_target_percent >= 1
    error_message = "cpu_target_percent must be at least 1."
  }
}

variable "memory_target_percent" {
  description = "Target memory utilization for HPA; null leaves memory out of the scaling decision (the working set of a file-serving pod includes page cache)"
  type        = number
  default     = 80

  validation {
    condition     = var.memory_target_percent == null ? true : var.memory_target_percent >= 1
    error_message = "memory_target_percent must be at least 1, or null."
  }
}

# =============================================================================
# Ingress Configuration
# =============================================================================

variable "enable_ingress" {
  description = "Create Ingress for external gRPC access (grpcs://ingress_host:443)"
  type        = bool
  default     = false
}

variable "ingress_host" {
  description = "Hostname for Ingress (required when enable_ingress)"
  type        = string
  default     = ""
}

variable "ingress_class" {
  description = "IngressClass name (nginx, traefik)"
  type        = string
  default     = "nginx"
}

variable "cert_manager_issuer" {
  description = "cert-manager ClusterIssuer name; empty for none"
  type        = string
  default     = "letsencrypt-prod"
}

variable "ingress_annotations" {
  description = "Additional Ingress annotations"
  type        = map(string)
  default     = {}
}

# =============================================================================
# Authentication (our addition)
# =============================================================================

variable "htpasswd_secret" {
  description = "Name of a Secret with an `htpasswd` key (bcrypt, MD5-crypt or SHA entries) enabling basic authentication on the cache. Null: no authentication. Probes, /status and /metrics never need credentials."
  type        = string
  default     = null
}

variable "allow_unauthenticated_reads" {
  description = "With htpasswd_secret: let clients without credentials read (but not write) the cache"
  type        = bool
  default     = false
}

# =============================================================================
# Monitoring Configuration
# =============================================================================

variable "enable_metrics" {
  description = "Enable per-endpoint Prometheus metrics (request latency histograms, gRPC and lookup counters)"
  type        = bool
  default     = true
}

variable "access_log_level" {
  description = "Access log level: none or all"
  type        = string
  default     = "none"

  validation {
    condition     = contains(["none", "all"], var.access_log_level)
    error_message = "access_log_level must be none or all"
  }
}

variable "create_service_monitor" {
  description = "Create ServiceMonitor for Prometheus Operator"
  type        = bool
  default     = true
}

variable "prometheus_release_label" {
  description = "Label value for Prometheus selector"
  type        = string
  default     = "prometheus"
}

variable "create_grafana_dashboard" {
  description = "Ship the Grafana dashboard as a ConfigMap picked up by the Grafana dashboard sidecar"
  type        = bool
  default     = false
}

variable "grafana_dashboard_namespace" {
  description = "Namespace of the dashboard ConfigMap (null: the module's namespace)"
  type        = string
  default     = null
}

variable "grafana_dashboard_labels" {
  description = "Labels the Grafana sidecar selects dashboard ConfigMaps by (kube-prometheus-stack: grafana_dashboard = \"1\")"
  type        = map(string)
  default = {
    "grafana_dashboard" = "1"
  }
}

# =============================================================================
# Network Policy (network-policy.tf)
# =============================================================================

variable "enable_network_policy" {
  description = "Create a NetworkPolicy: ingress to the cache ports only from client namespaces, the monitoring namespace (and the ingress controller), egress only to S3/MinIO and DNS"
  type        = bool
  default     = true
}

variable "client_namespace_labels" {
  description = "Labels of the namespaces whose pods may use the cache (label the GitLab runner namespace with them)"
  type        = map(string)
  default = {
    "bazel-cache/client" = "true"
  }

  validation {
    # An empty selector would select every namespace.
    condition     = length(var.client_namespace_labels) > 0
    error_message = "client_namespace_labels must not be empty: an empty namespace selector admits every namespace."
  }
}

variable "monitoring_namespace" {
  description = "Namespace of Prometheus, allowed to scrape the HTTP port"
  type        = string
  default     = "monitoring"
}

variable "ingress_controller_namespace" {
  description = "Namespace of the ingress controller, allowed to reach the gRPC port when enable_ingress"
  type        = string
  default     = "ingress-nginx"
}

variable "s3_namespace" {
  description = "Namespace of the S3/MinIO pods for the egress rule; null derives it from s3_endpoint when that is a <service>.<namespace>.svc name"
  type        = string
  default     = null
}

variable "s3_pod_labels" {
  description = "Labels of the S3/MinIO pods within s3_namespace ({} = any pod there)"
  type        = map(string)
  default     = {}
}

variable "s3_target_port" {
  description = "Port the S3/MinIO pods listen on, if the Service maps s3_endpoint's port to another one (null: the endpoint's port)"
  type        = number
  default     = null
}

variable "s3_egress_cidrs" {
  description = "CIDRs the S3 endpoint resolves to, for S3 outside the cluster (used instead of a namespace)"
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.s3_egress_cidrs : length(regexall("^[0-9]{1,3}(\\.[0-9]{1,3}){3}/[0-9]{1,2}$|^[0-9A-Fa-f:]+/[0-9]{1,3}$", c)) > 0])
    error_message = "s3_egress_cidrs must be CIDR blocks such as 10.0.0.0/8."
  }
}

variable "dns_namespace" {
  description = "Namespace of the cluster DNS pods"
  type        = string
  default     = "kube-system"
}

variable "dns_pod_labels" {
  description = "Labels of the cluster DNS pods"
  type        = map(string)
  default = {
    "k8s-app" = "kube-dns"
  }
}

# =============================================================================
# Labels
# =============================================================================

variable "additional_labels" {
  description = "Additional labels for all resources"
  type        = map(string)
  default     = {}
}
