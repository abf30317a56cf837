package agentapi

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"time"
)

// ClientTLS returns the TLS configuration with which the server calls the
// agents: it trusts only the CA of caFile, verifies that an agent's
// certificate names the host part of the address it dials (crypto/tls's
// own check, done in the handshake, before any request — and so any
// token — is written), and presents the client certificate of certFile and
// keyFile, which the agents require. The key pair is read again when its
// files change, so a renewed certificate needs no restart; the CA is read
// once.
func ClientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("agents' CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("agents' CA: %s holds no PEM certificate", caFile)
	}
	kp := &keyPair{certFile: certFile, keyFile: keyFile}
	if _, err := kp.get(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    roots,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return kp.get()
		},
	}, nil
}

// keyPair is a certificate and key read from files, read again when either
// file's modification time or size changes.
type keyPair struct {
	certFile, keyFile string

	mu    sync.Mutex
	stamp [2]fileStamp
	cert  *tls.Certificate
}

type fileStamp struct {
	mod  time.Time
	size int64
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{fi.ModTime(), fi.Size()}, nil
}

func (k *keyPair) get() (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	cs, err := stampOf(k.certFile)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	ks, err := stampOf(k.keyFile)
	if err != nil {
		return nil, fmt.Errorf("client key: %w", err)
	}
	if k.cert != nil && k.stamp == [2]fileStamp{cs, ks} {
		return k.cert, nil
	}
	c, err := tls.LoadX509KeyPair(k.certFile, k.keyFile)
	if err != nil {
		return nil, fmt.Errorf("client certificate %s and key %s: %w", k.certFile, k.keyFile, err)
	}
	k.cert, k.stamp = &c, [2]fileStamp{cs, ks}
	return k.cert, nil
}
