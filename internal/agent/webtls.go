package agent

import (
	"os"

	"github.com/prometheus/exporter-toolkit/web"
	"gopkg.in/yaml.v3"
)

// webTLSWarnings says what an exporter-toolkit web config leaves open on
// the agent's listener: without TLS the server's token travels in clear;
// without verified client certificates anyone who has the token may act;
// without client_allowed_sans any certificate of the CA may (another
// host's agent's, for one). The agent still starts (web.Validate has
// checked the file): the operator decides, but is told.
func webTLSWarnings(path string) []string {
	if path == "" {
		return []string{"no --web.config.file: plain HTTP, the server's action token travels in clear; see README, Server–agent TLS"}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil // web.Validate reports it
	}
	var c web.Config
	if err := yaml.Unmarshal(b, &c); err != nil {
		return nil
	}
	t := c.TLSConfig
	switch {
	case !t.IsEnabled():
		return []string{"web config without tls_server_config: plain HTTP, the server's action token travels in clear"}
	case t.ClientAuth != "RequireAndVerifyClientCert":
		return []string{"web config does not set client_auth_type: RequireAndVerifyClientCert: actions are open to anyone with the token, not only the server"}
	case len(t.ClientAllowedSans) == 0:
		return []string{"web config without client_allowed_sans: any certificate of the client CA may call actions, not only the server's"}
	}
	return nil
}
