services {
  name = "web"
  port = 80
}
services {
  name = "echo"
  port = 9090
}
