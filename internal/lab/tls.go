package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/exporter-toolkit/web"

	"caretaker/internal/pki"
)

// labTLS is the lab's small CA (data_dir/pki) and the server's client
// certificate: the server scrapes and acts on the lab's agents over mutual
// TLS, as a fleet configured by README's "Server–agent TLS" does.
type labTLS struct {
	dir string
	ca  *pki.CA
}

// serverCertName is the name of the server's client certificate, the one
// SAN the agents allow.
const serverCertName = "caretaker-server"

// labCertValidity is long enough for any lab run.
const labCertValidity = 30 * 24 * time.Hour

// makeTLS makes the lab's CA, or keeps the one a kept --data.dir holds,
// and issues the server's certificate.
func makeTLS(dataDir string) (*labTLS, error) {
	dir := filepath.Join(dataDir, "pki")
	ca, err := pki.LoadCA(dir)
	if errors.Is(err, fs.ErrNotExist) {
		ca, err = pki.InitCA(dir, "caretaker lab CA", labCertValidity, false)
	}
	if err != nil {
		return nil, fmt.Errorf("lab TLS: %w", err)
	}
	if _, _, err := ca.Issue(dir, pki.Request{Name: serverCertName, Usage: pki.Server, Validity: labCertValidity}, true); err != nil {
		return nil, fmt.Errorf("lab TLS: %w", err)
	}
	return &labTLS{dir: dir, ca: ca}, nil
}

// agentWebConfig issues the certificate of host's agent, naming the host
// and the IP address it listens on, and writes its exporter-toolkit web
// config: TLS, client certificates of the lab's CA required, the server's
// the only one allowed. It returns the web config's path.
func (l *labTLS) agentWebConfig(host, ip string) (string, error) {
	crt, key, err := l.ca.Issue(l.dir, pki.Request{Name: host, SANs: []string{ip}, Usage: pki.Agent, Validity: labCertValidity}, true)
	if err != nil {
		return "", fmt.Errorf("lab TLS: %w", err)
	}
	path := filepath.Join(l.dir, host+"-web.yml")
	body := fmt.Sprintf("# written by caretaker lab: %s's agent serves over TLS and takes only the server's certificate\n"+
		"tls_server_config:\n  cert_file: %s\n  key_file: %s\n  client_auth_type: RequireAndVerifyClientCert\n"+
		"  client_ca_file: %s\n  client_allowed_sans: [%s]\n", host, crt, key, filepath.Join(l.dir, pki.CACertFile), serverCertName)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		return "", fmt.Errorf("lab TLS: %w", err)
	}
	return path, nil
}

// serverConfig is the agents.tls section of the lab's server.yml.
func (l *labTLS) serverConfig() string {
	return fmt.Sprintf("  tls:\n    ca_file: %s\n    cert_file: %s\n    key_file: %s\n",
		filepath.Join(l.dir, pki.CACertFile), filepath.Join(l.dir, serverCertName+".crt"), filepath.Join(l.dir, serverCertName+".key"))
}

// serveTLS serves h on l with the web config (as agent.Serve does) until
// ctx is done, then shuts down.
func serveTLS(ctx context.Context, l net.Listener, h http.Handler, webConfig string, logger *slog.Logger) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute,
		WriteTimeout: 5 * time.Minute, IdleTimeout: 2 * time.Minute} // as agent.Serve
	noSystemd := false
	addrs := []string{l.Addr().String()}
	flags := &web.FlagConfig{WebListenAddresses: &addrs, WebSystemdSocket: &noSystemd, WebConfigFile: &webConfig}
	served := make(chan error, 1)
	go func() { served <- web.Serve(l, srv, flags, logger) }()
	select {
	case err := <-served:
		return fmt.Errorf("serve agent on %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		srv.Close()
	}
	<-served
	return err
}
