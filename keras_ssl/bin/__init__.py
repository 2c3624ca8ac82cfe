"""absl binaries: the only place in keras_ssl where flags live."""
