//! The module's interface (the design's variables, outputs and usage
//! block), its validations and preconditions, and the objects it renders.

use std::collections::{BTreeMap, BTreeSet};

use hcl::eval::{Context, Evaluate};
use hcl::{Block, Map, Number, Value};

use crate::support::deploy::{
    dashboard_path, design_part, design_section_2, design_usage_inputs, inputs_with, module_dir,
    read, render_ok,
};
use crate::support::tofu::{Module, at, attr, label, list, n, render, s, v};

/// Defaults the module changed on purpose (README.md says why), each with
/// the reason; a listed variable whose default matches the design again is
/// reported, so the list stays true.
const CHANGED_DEFAULTS: &[(&str, &str)] = &[
    ("image", "ours instead of bazel-remote's"),
    (
        "max_cache_size_gb",
        "per-replica max_size derived from local_cache_size_gb",
    ),
];

#[test]
fn keeps_the_design_interface() {
    let module = Module::load(&module_dir());
    let names: Vec<&str> = module.files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "hpa.tf",
            "main.tf",
            "monitoring.tf",
            "network-policy.tf",
            "outputs.tf",
            "variables.tf"
        ],
        "the files of the design's section 2.1"
    );

    // Every variable of the design's variables.tf, same type, same default
    // unless listed as changed.
    let section = design_section_2();
    let design_vars = hcl::parse(design_part(
        &section,
        "2.3 Variables (variables.tf)\n",
        Some("2.4 HPA Configuration"),
    ))
    .expect("the design's variables.tf parses");
    let ours = module.variables();
    let mut changed = BTreeSet::new();
    let mut design_count = 0;
    for block in design_vars
        .blocks()
        .filter(|b| b.identifier() == "variable")
    {
        design_count += 1;
        let name = label(block, 0);
        let mine = ours
            .get(name)
            .unwrap_or_else(|| panic!("variable {name} of the design is missing"));
        assert_eq!(
            attr(block.body(), "type"),
            attr(mine.body(), "type"),
            "type of {name}"
        );
        let default =
            |b: &Block| attr(b.body(), "default").map(|e| e.evaluate(&Context::new()).unwrap());
        if default(block) != default(mine) {
            assert!(
                CHANGED_DEFAULTS.iter().any(|(n, _)| *n == name),
                "default of {name} differs from the design ({:?} vs {:?}) without being listed in CHANGED_DEFAULTS",
                default(block),
                default(mine)
            );
            changed.insert(name.to_string());
        }
    }
    assert_eq!(design_count, 35, "the design's variables");
    let listed: BTreeSet<String> = CHANGED_DEFAULTS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(changed, listed, "CHANGED_DEFAULTS is out of date");

    // Every output of the design.
    let design_outputs = hcl::parse(design_part(&section, "2.6 Outputs (outputs.tf)\n", None))
        .expect("the design's outputs.tf parses");
    let our_outputs: BTreeSet<&str> = module.blocks("output").map(|b| label(b, 0)).collect();
    for b in design_outputs.blocks() {
        assert!(
            our_outputs.contains(label(b, 0)),
            "output {} of the design is missing",
            label(b, 0)
        );
    }

    // References: every var.X is declared, every variable is used, and a
    // validation refers to its own variable only (OpenTofu before 1.8
    // refuses anything else; the module says `>= 1.6.0`).
    let reference = regex::Regex::new(r"\bvar\.([a-z0-9_]+)").unwrap();
    let mut used = BTreeSet::new();
    for (file, _) in &module.files {
        let text = read(module.dir.join(file));
        for cap in reference.captures_iter(&text) {
            let name = cap[1].to_string();
            assert!(
                ours.contains_key(&name),
                "{file} uses undeclared var.{name}"
            );
            if file != "variables.tf" {
                used.insert(name);
            }
        }
    }
    for name in ours.keys() {
        assert!(
            used.contains(name),
            "variable {name} is declared but never used"
        );
    }
    for (name, block) in &ours {
        for v in block
            .body()
            .blocks()
            .filter(|b| b.identifier() == "validation")
        {
            let cond = hcl::format::to_string(attr(v.body(), "condition").unwrap()).unwrap();
            for cap in reference.captures_iter(&cond) {
                assert_eq!(
                    &cap[1], name,
                    "validation of {name} refers to var.{}",
                    &cap[1]
                );
            }
        }
    }

    // The design's usage block applies unchanged, and the outputs read as
    // the design's do.
    let r = render(&module, &design_usage_inputs()).expect("the design's usage block applies");
    assert_eq!(
        s(r.output("grpc_endpoint")),
        "grpc://bazel-cache.attic-cache.svc.cluster.local:9092"
    );
    assert_eq!(
        s(r.output("http_endpoint")),
        "http://bazel-cache.attic-cache.svc.cluster.local:8080"
    );
    assert!(
        s(r.output("bazelrc_config")).contains(
            "build --remote_cache=grpc://bazel-cache.attic-cache.svc.cluster.local:9092\n"
        )
    );
    assert_eq!(r.output("external_grpc_endpoint"), &Value::Null);
    assert_eq!(n(r.output("max_size_gib")), 8.0, "80% of the 10 GiB volume");
    // What the usage block creates by default; Ingress and the dashboard
    // ConfigMap are opt-in.
    let created: Vec<&str> = r.resources.keys().map(String::as_str).collect();
    assert_eq!(
        created,
        [
            "kubectl_manifest.prometheus_rules",
            "kubectl_manifest.service_monitor",
            "kubernetes_config_map.config",
            "kubernetes_deployment.main",
            "kubernetes_horizontal_pod_autoscaler_v2.main",
            "kubernetes_network_policy.main",
            "kubernetes_service.main",
        ]
    );
}

#[test]
fn validations_and_preconditions_refuse_what_a_cluster_would() {
    let module = Module::load(&module_dir());
    let cases: Vec<(Vec<(&str, Value)>, &str)> = vec![
        (vec![("name", v("1cache"))], "RFC 1035 label"),
        (vec![("name", v("Bazel-Cache"))], "RFC 1035 label"),
        (vec![("namespace", v("attic_cache"))], "RFC 1123 label"),
        (
            vec![("s3_endpoint", v("http://minio.attic-cache.svc:9000"))],
            "without a scheme",
        ),
        (
            vec![("s3_bucket", v("Bazel_Cache"))],
            "valid S3 bucket name",
        ),
        (
            vec![("s3_bucket_lookup_type", v("virtual"))],
            "must be auto, dns, or path",
        ),
        (
            vec![("access_log_level", v("debug"))],
            "must be none or all",
        ),
        (vec![("max_cache_size_gb", v(0))], "greater than 0"),
        // The design's old default (100 GB on a 10 GiB volume): the kubelet
        // would evict the pod once the cache outgrew its emptyDir.
        (
            vec![("max_cache_size_gb", v(100))],
            "below local_cache_size_gb",
        ),
        (
            vec![(
                "local_cache_size_gb",
                Value::Number(Number::from_f64(10.5).unwrap()),
            )],
            "whole number",
        ),
        (vec![("num_uploaders", v(0))], "at least 1"),
        (vec![("min_replicas", v(0))], "at least 1"),
        (
            vec![("min_replicas", v(3)), ("max_replicas", v(2))],
            "at least min_replicas",
        ),
        (vec![("enable_ingress", v(true))], "needs ingress_host"),
        (
            vec![("client_namespace_labels", Value::Object(Map::new()))],
            "admits every namespace",
        ),
        (
            vec![("s3_endpoint", v("s3.eu-west-1.amazonaws.com"))],
            "cannot tell where S3 is",
        ),
        (
            vec![("s3_egress_cidrs", Value::Array(vec![v("10.0.0.0")]))],
            "CIDR blocks",
        ),
        (
            vec![
                ("name", v("a-rather-long-bazel-cache-name-for-a-team")),
                ("namespace", v("and-an-equally-long-namespace")),
            ],
            "63 characters",
        ),
        (vec![("max_size", v(10))], "not declared"),
    ];
    for (extra, expected) in cases {
        match render(&module, &inputs_with(&extra)) {
            Ok(_) => panic!("{extra:?} was accepted; expected an error mentioning {expected:?}"),
            Err(e) => assert!(
                e.contains(expected),
                "{extra:?}: expected an error mentioning {expected:?}, got: {e}"
            ),
        }
    }
    // Without a required input.
    let mut missing = design_usage_inputs();
    missing.retain(|(k, _)| k != "s3_secret");
    let e = render(&module, &missing)
        .err()
        .expect("s3_secret is required");
    assert!(e.contains("required variable s3_secret"), "{e}");

    // And what is allowed.
    for extra in [
        vec![("max_cache_size_gb", v(9))],
        vec![("htpasswd_secret", v("bazel-cache-htpasswd"))],
        vec![("memory_target_percent", Value::Null)],
        vec![
            ("enable_ingress", v(true)),
            ("ingress_host", v("bazel-cache.example.org")),
            ("cert_manager_issuer", v("")),
        ],
        vec![
            ("s3_endpoint", v("s3.eu-west-1.amazonaws.com")),
            ("s3_disable_ssl", v(false)),
            ("s3_egress_cidrs", Value::Array(vec![v("52.95.128.0/21")])),
        ],
        vec![
            ("enable_network_policy", v(false)),
            ("s3_endpoint", v("minio:9000")),
        ],
    ] {
        render_ok(&module, &extra);
    }
}

#[test]
fn rendered_objects_fit_together_and_fix_the_design() {
    let module = Module::load(&module_dir());
    let r = render_ok(&module, &[]);
    let deployment = r.resource("kubernetes_deployment.main");
    let pod = at(deployment, "spec.0.template.0.spec.0");
    let container = at(pod, "container.0");
    let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(s(at(
        r.resource("kubernetes_config_map.config"),
        "data.config.yaml",
    )))
    .unwrap();

    // The data volume is the config's dir; the emptyDir limit and the
    // ephemeral-storage request are the volume size; max_size fits in it.
    let mounts: BTreeMap<&str, &str> = list(at(container, "volume_mount"))
        .iter()
        .map(|m| (s(at(m, "name")), s(at(m, "mount_path"))))
        .collect();
    assert_eq!(config["dir"].as_str(), Some(mounts["cache"]));
    assert_eq!(s(at(pod, "volume.1.empty_dir.0.size_limit")), "10Gi");
    assert_eq!(
        s(at(container, "resources.0.requests.ephemeral-storage")),
        "10Gi"
    );
    assert_eq!(config["max_size"].as_f64(), Some(8.0));

    // The pod rolls when the configuration changes.
    use sha2::Digest;
    let yaml = s(at(
        r.resource("kubernetes_config_map.config"),
        "data.config.yaml",
    ));
    assert_eq!(
        s(at(
            deployment,
            "spec.0.template.0.metadata.0.annotations.bazel-cache/config-sha256"
        )),
        hex::encode(sha2::Sha256::digest(yaml.as_bytes()))
    );

    // "restricted" Pod Security: non-root, no privilege escalation, all
    // capabilities dropped, RuntimeDefault seccomp.
    assert_eq!(
        at(pod, "security_context.0.run_as_user"),
        &Value::from(1000)
    );
    assert_eq!(
        s(at(pod, "security_context.0.seccomp_profile.0.type")),
        "RuntimeDefault"
    );
    let csc = at(container, "security_context.0");
    assert_eq!(at(csc, "allow_privilege_escalation"), &Value::Bool(false));
    assert_eq!(at(csc, "read_only_root_filesystem"), &Value::Bool(true));
    assert_eq!(
        list(at(csc, "capabilities.0.drop")),
        &vec![Value::from("ALL")]
    );
    // Termination: the server drains requests for up to 30 s, lets queued
    // uploads go on for up to 15 s, then closes its store (5 s at most);
    // the grace period covers all of it, and liveness (failing once the
    // listeners close) cannot restart a pod before that.
    let grace = n(at(pod, "termination_grace_period_seconds"));
    assert!(grace > 30.0 + 15.0 + 5.0, "grace period {grace}");
    let liveness = at(container, "liveness_probe.0");
    assert!(
        n(at(liveness, "period_seconds")) * n(at(liveness, "failure_threshold")) > grace,
        "liveness could restart a draining pod"
    );

    // The Service selects the pods.
    let svc = r.resource("kubernetes_service.main");
    let pod_labels = at(deployment, "spec.0.template.0.metadata.0.labels");
    for (k, v) in at(svc, "spec.0.selector").as_object().unwrap() {
        assert_eq!(
            pod_labels.as_object().unwrap().get(k),
            Some(v),
            "selector {k}"
        );
    }

    // Ingress: no class annotation next to ingressClassName (the API server
    // refuses both), gRPC backend, unlimited body size.
    let r_ing = render_ok(
        &module,
        &[
            ("enable_ingress", Value::Bool(true)),
            ("ingress_host", Value::from("bazel-cache.example.org")),
        ],
    );
    let ing = r_ing.resource("kubernetes_ingress_v1.main");
    let annotations = at(ing, "metadata.0.annotations").as_object().unwrap();
    assert!(!annotations.contains_key("kubernetes.io/ingress.class"));
    assert_eq!(s(at(ing, "spec.0.ingress_class_name")), "nginx");
    assert_eq!(
        annotations.get("nginx.ingress.kubernetes.io/backend-protocol"),
        Some(&Value::from("GRPC"))
    );
    assert_eq!(
        annotations.get("nginx.ingress.kubernetes.io/proxy-body-size"),
        Some(&Value::from("0"))
    );
    assert_eq!(
        s(r_ing.output("external_grpc_endpoint")),
        "grpcs://bazel-cache.example.org:443"
    );

    // NetworkPolicy: the usage block's MinIO (namespace from the endpoint,
    // port 9000), DNS, and nothing else out; clients and Prometheus in.
    let np = r.resource("kubernetes_network_policy.main");
    let spec = at(np, "spec.0");
    assert_eq!(
        at(spec, "pod_selector.0.match_labels"),
        at(svc, "spec.0.selector")
    );
    let egress = list(at(spec, "egress"));
    assert_eq!(egress.len(), 2, "DNS and MinIO: {egress:#?}");
    assert_eq!(
        s(at(
            &egress[1],
            "to.0.namespace_selector.0.match_labels.kubernetes.io/metadata.name"
        )),
        "attic-cache"
    );
    assert_eq!(n(at(&egress[1], "ports.0.port")), 9000.0);
    let ingress_ports: Vec<Vec<f64>> = list(at(spec, "ingress"))
        .iter()
        .map(|rule| {
            list(at(rule, "ports"))
                .iter()
                .map(|p| n(at(p, "port")))
                .collect()
        })
        .collect();
    assert_eq!(ingress_ports, [vec![8080.0, 9092.0], vec![8080.0]]);
    // With the Ingress, its controller may reach gRPC.
    let np_ing = r_ing.resource("kubernetes_network_policy.main");
    assert_eq!(list(at(np_ing, "spec.0.ingress")).len(), 3);
    // External S3: egress by CIDR, port 443 without TLS disabled.
    let r_ext = render_ok(
        &module,
        &[
            ("s3_endpoint", Value::from("s3.eu-west-1.amazonaws.com")),
            ("s3_disable_ssl", Value::Bool(false)),
            (
                "s3_egress_cidrs",
                Value::Array(vec![
                    Value::from("52.95.128.0/21"),
                    Value::from("3.5.64.0/21"),
                ]),
            ),
        ],
    );
    let egress = list(at(
        r_ext.resource("kubernetes_network_policy.main"),
        "spec.0.egress",
    ));
    assert_eq!(egress.len(), 2);
    assert_eq!(s(at(&egress[1], "to.1.ip_block.0.cidr")), "3.5.64.0/21");
    assert_eq!(n(at(&egress[1], "ports.0.port")), 443.0);

    // HPA: memory scaling can be turned off.
    let r_mem = render_ok(&module, &[("memory_target_percent", Value::Null)]);
    let metrics = list(at(
        r_mem.resource("kubernetes_horizontal_pod_autoscaler_v2.main"),
        "spec.0.metric",
    ));
    assert_eq!(metrics.len(), 1, "CPU only");

    // The dashboard ConfigMap ships deploy/grafana/bazel-cache.json as is.
    let r_dash = render_ok(&module, &[("create_grafana_dashboard", Value::Bool(true))]);
    let cm = r_dash.resource("kubernetes_config_map.grafana_dashboard");
    assert_eq!(s(at(cm, "data.bazel-cache.json")), read(dashboard_path()));
    assert_eq!(s(at(cm, "metadata.0.labels.grafana_dashboard")), "1");
    assert_eq!(s(at(cm, "metadata.0.namespace")), "attic-cache");
}
