//! Throw-away certificates made with the real `openssl` command: a CA, a
//! server certificate for 127.0.0.1/localhost and client certificates, for
//! the TLS and mTLS tests.

use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (the openssl package is a dependency of ca-certificates)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA in `dir`: `<name>.pem` and `<name>.key`.
pub(crate) struct Ca {
    pub(crate) dir: PathBuf,
    pub(crate) name: String,
}

/// A certificate and its key (PKCS#8 PEM, which Netty, i.e. Bazel, needs).
pub(crate) struct Leaf {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

impl Ca {
    pub(crate) fn new(dir: &Path, name: &str) -> Ca {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        Ca {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    pub(crate) fn pem(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub(crate) fn server(&self, name: &str) -> Leaf {
        self.leaf(
            name,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
    }

    /// A client certificate (for mTLS).
    pub(crate) fn client(&self, name: &str) -> Leaf {
        self.leaf(name, "extendedKeyUsage=clientAuth\n")
    }

    fn leaf(&self, name: &str, ext: &str) -> Leaf {
        let ext_file = format!("{name}.cnf");
        std::fs::write(
            self.dir.join(&ext_file),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{ext}"),
        )
        .unwrap();
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &format!("{}.pem", self.name),
                "-CAkey",
                &format!("{}.key", self.name),
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext_file,
            ],
        );
        Leaf {
            cert: self.dir.join(pem),
            key: self.dir.join(key),
        }
    }
}
