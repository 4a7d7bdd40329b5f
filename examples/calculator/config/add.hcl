Kind     = "service-defaults"
Name     = "add"
Protocol = "http"
