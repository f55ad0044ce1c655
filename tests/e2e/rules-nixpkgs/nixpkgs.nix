# The nixpkgs the project's flake pins: flake.lock (a link to the
# repository's) names the revision and its NAR hash. fetchTarball with that
# hash computes the same store path the flake input has, so on a machine
# that already has the flake's nixpkgs (the VM test puts it in the VM's
# store) nothing is downloaded.
let
  lock = builtins.fromJSON (builtins.readFile ./flake.lock);
  locked = lock.nodes.nixpkgs.locked;
in
import (builtins.fetchTarball {
  url = "https://github.com/${locked.owner}/${locked.repo}/archive/${locked.rev}.tar.gz";
  sha256 = locked.narHash;
})
