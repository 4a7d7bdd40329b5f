service {
  name = "client"
  port = 8080
}
