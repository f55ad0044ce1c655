//! Configuration loading as the binary does it: command line + injected
//! environment + YAML file, through `bazel_cache::config::from_args_and_env`.
//! One module per concern; the loading fixture is in `helpers`.

mod command_line;
mod helpers;
mod secrets;
mod sources;
mod url_proxies;
mod validation;
mod values;
