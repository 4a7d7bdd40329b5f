services {
  name = "client"
  port = 8080
  connect { sidecar_service { proxy { upstreams { destination_name = "echo"  local_bind_port = 9191 } } } }
}
services {
  name = "echo"
  port = 9090
  check { tcp = "127.0.0.1:9090"  interval = "1s"  timeout = "500ms" }
  connect { sidecar_service {} }
}
