Kind     = "service-defaults"
Name     = "frontend"
Protocol = "http"
