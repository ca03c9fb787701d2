# Hearth's nodes on Nomad (docs/cluster.md): a system job, one node on
# every client that can host VMs. hearth-api.nomad.hcl runs the API servers.
#
# Host prerequisites of the node clients: Linux with KVM (/dev/kvm, vmx or
# svm; QEMU TCG otherwise), cgroups, nftables and iproute2, hearth and
# hearth-init in /usr/local/bin, the kernel and base template built in
# /var/lib/hearth, and the raw_exec driver enabled (the node needs root for
# network namespaces, taps and nftables). Nomad variables at
# nomad/jobs/hearth hold the store URL and the cluster secret.

job "hearth-node" {
  type = "system"

  group "node" {
    constraint {
      attribute = "${attr.kernel.name}"
      value     = "linux"
    }

    network {
      port "node" {
        static = 3001
      }
    }

    task "node" {
      driver = "raw_exec"

      config {
        command = "/usr/local/bin/hearth"
        args = [
          "node",
          "--listen", "0.0.0.0:3001",
          "--advertise", "${attr.unique.network.ip-address}:3001",
          "--node-id", "${node.unique.name}",
        ]
      }

      template {
        destination = "secrets/cluster.env"
        env         = true
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/hearth" }}
          HEARTH_STORE={{ .store }}
          HEARTH_CLUSTER_SECRET={{ .cluster_secret }}
          {{ end }}
        EOT
      }

      # The sandboxes' VMMs outlive the node process: a restart takes them
      # over. Stop it with SIGTERM and give it time.
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
