services {
  name = "web"
  port = 80
}
services {
  name = "echo"
  port = 70000
  check {
    tcp = "127.0.0.1"
  }
}
