# The Consul Connect calculator as a Plexus job: `add` ×2 and `sub` ×2 (Python), `frontend` ×2
# (Node.js), every instance on dynamic ports with its own sidecar; the frontend reaches add and
# sub through its sidecar's upstreams. @CALC_DIR@ is this directory (see README.md):
#
#   sed "s|@CALC_DIR@|$PWD/examples/calculator|g" examples/calculator/calculator.hcl > /tmp/calculator.hcl
#   plexus job run /tmp/calculator.hcl
job "calculator" {
  update {
    max_parallel     = 1
    min_healthy_time = "2s"
    healthy_deadline = "30s"
    auto_revert      = true
  }

  group "add" {
    count = 2
    network {
      port "http" {}
    }
    service {
      name = "add"
      port = "http"
      check {
        type     = "http"
        path     = "/health"
        interval = "1s"
        timeout  = "500ms"
      }
      connect {
        sidecar_service {}
      }
    }
    task "app" {
      driver = "exec"
      config {
        command = "python3"
        args    = ["@CALC_DIR@/add.py"]
      }
    }
    restart {
      attempts = 5
      interval = "1m"
      delay    = "1s"
      mode     = "delay"
    }
  }

  group "sub" {
    count = 2
    network {
      port "http" {}
    }
    service {
      name = "sub"
      port = "http"
      check {
        type     = "http"
        path     = "/health"
        interval = "1s"
        timeout  = "500ms"
      }
      connect {
        sidecar_service {}
      }
    }
    task "app" {
      driver = "exec"
      config {
        command = "python3"
        args    = ["@CALC_DIR@/sub.py"]
      }
    }
    restart {
      attempts = 5
      interval = "1m"
      delay    = "1s"
      mode     = "delay"
    }
  }

  group "frontend" {
    count = 2
    network {
      port "http" {}
    }
    service {
      name = "frontend"
      port = "http"
      check {
        type     = "http"
        path     = "/health"
        interval = "1s"
        timeout  = "500ms"
      }
      connect {
        sidecar_service {
          proxy {
            upstreams {
              destination_name = "add"
            }
            upstreams {
              destination_name = "sub"
            }
          }
        }
      }
    }
    task "app" {
      driver = "exec"
      config {
        command = "node"
        args    = ["@CALC_DIR@/frontend.js"]
      }
    }
    restart {
      attempts = 5
      interval = "1m"
      delay    = "1s"
      mode     = "delay"
    }
  }
}
