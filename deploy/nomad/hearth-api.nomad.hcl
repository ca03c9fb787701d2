# Hearth's API servers on Nomad (docs/cluster.md): a service job, two of
# them on different clients, registered as the service hearth-api for a
# load balancer. They need no KVM and no root (raw_exec here for the
# binary in /usr/local/bin; any driver that runs it will do). Nomad
# variables at nomad/jobs/hearth hold the store URL and the cluster secret.

job "hearth-api" {
  type = "service"

  group "api" {
    count = 2

    spread {
      attribute = "${node.unique.id}"
    }

    network {
      port "api" {}
    }

    service {
      name = "hearth-api"
      port = "api"

      check {
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "api" {
      driver = "raw_exec"

      config {
        command = "/usr/local/bin/hearth"
        args    = ["api", "--listen", "0.0.0.0:${NOMAD_PORT_api}"]
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

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
