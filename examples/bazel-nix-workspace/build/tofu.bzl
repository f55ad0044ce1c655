"""build/tofu.bzl - OpenTofu validation rules for Bazel (design section 4.1)

Differences from the design document's rules (see README.md):
- the file list and the module directory are written into the test script;
  the design's scripts read them from "$@" / "$1", which Bazel never passes,
  so its fmt test checked nothing and its validate test always failed;
- the tofu binary is a label (`tofu`, e.g. "@opentofu//:bin" from nixpkgs),
  part of the test's runfiles, instead of whatever `tofu` is on PATH;
- validate runs in a writable copy of the module under $TEST_TMPDIR, since
  `tofu init` writes .terraform/ and the lock file next to the sources.
"""

def _quote(s):
    return "'" + s.replace("'", "'\\''") + "'"

def _tofu_path(ctx):
    return ctx.file.tofu.short_path

def _tofu_fmt_test_impl(ctx):
    files = [f for f in ctx.files.srcs if f.extension in ["tf", "tfvars"]]
    if not files:
        fail("tofu_fmt_test %s: srcs hold no .tf or .tfvars file" % ctx.label)
    script = ctx.actions.declare_file(ctx.label.name + ".sh")
    ctx.actions.write(
        output = script,
        content = """#!/usr/bin/env bash
set -euo pipefail
TOFU="$PWD/{tofu}"
status=0
for f in {files}; do
  if ! "$TOFU" fmt -check -diff -no-color "$f"; then
    echo "ERROR: $f is not formatted (run: tofu fmt $f)"
    status=1
  fi
done
[ "$status" -eq 0 ] && echo "All {count} OpenTofu files are properly formatted"
exit "$status"
""".format(
            tofu = _tofu_path(ctx),
            files = " ".join([_quote(f.short_path) for f in files]),
            count = len(files),
        ),
        is_executable = True,
    )
    runfiles = ctx.runfiles(files = ctx.files.srcs + [ctx.file.tofu])
    return [DefaultInfo(executable = script, runfiles = runfiles)]

tofu_fmt_test = rule(
    implementation = _tofu_fmt_test_impl,
    test = True,
    attrs = {
        "srcs": attr.label_list(
            allow_files = True,
            doc = "OpenTofu files (.tf, .tfvars) to check",
        ),
        "tofu": attr.label(
            allow_single_file = True,
            mandatory = True,
            doc = "The tofu executable",
        ),
    },
    doc = "Test that OpenTofu files are formatted as `tofu fmt` writes them",
)

def _tofu_validate_test_impl(ctx):
    prefix = ctx.attr.module_dir.rstrip("/") + "/"
    tf = [f for f in ctx.files.srcs if f.short_path.startswith(prefix) and f.extension == "tf"]
    if not tf:
        fail("tofu_validate_test %s: no .tf file of srcs is under module_dir %s" % (ctx.label, ctx.attr.module_dir))
    script = ctx.actions.declare_file(ctx.label.name + ".sh")
    ctx.actions.write(
        output = script,
        content = """#!/usr/bin/env bash
set -euo pipefail
TOFU="$PWD/{tofu}"
MODULE_DIR={module_dir}
echo "Validating OpenTofu module in $MODULE_DIR..."
WORK="${{TEST_TMPDIR:-$(mktemp -d)}}/module"
rm -rf "$WORK"
cp -RL "$MODULE_DIR" "$WORK"
cd "$WORK"
# Initialize without backend (downloads the providers: needs the network)
"$TOFU" init -backend=false -input=false -no-color
if ! "$TOFU" validate -no-color; then
  echo "ERROR: OpenTofu validation failed for $MODULE_DIR"
  exit 1
fi
echo "OpenTofu module $MODULE_DIR is valid"
""".format(
            tofu = _tofu_path(ctx),
            module_dir = _quote(ctx.attr.module_dir),
        ),
        is_executable = True,
    )
    runfiles = ctx.runfiles(files = ctx.files.srcs + [ctx.file.tofu])
    return [DefaultInfo(executable = script, runfiles = runfiles)]

tofu_validate_test = rule(
    implementation = _tofu_validate_test_impl,
    test = True,
    attrs = {
        "srcs": attr.label_list(
            allow_files = True,
            doc = "OpenTofu module files (everything the module reads: .tf and files it loads)",
        ),
        "module_dir": attr.string(
            mandatory = True,
            doc = "Path of the module directory from the workspace root",
        ),
        "tofu": attr.label(
            allow_single_file = True,
            mandatory = True,
            doc = "The tofu executable",
        ),
    },
    doc = "Test that an OpenTofu module passes `tofu init -backend=false` and `tofu validate`",
)
