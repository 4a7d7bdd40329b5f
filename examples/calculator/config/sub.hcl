Kind     = "service-defaults"
Name     = "sub"
Protocol = "http"
