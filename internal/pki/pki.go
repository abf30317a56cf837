// Package pki makes the small certificate authority that secures the
// server–agent connections, and issues its certificates: each agent's
// serving certificate (serverAuth), naming its host and agent address, and
// the server's client certificate (clientAuth), which the agents require.
// Keys are ECDSA P-256; key files are written 0600 and never overwritten
// unless asked.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// File names in a CA directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// Usage is what an issued certificate is for.
type Usage string

const (
	// Agent certificates serve the agent's listener (serverAuth).
	Agent Usage = "agent"
	// Server certificates are the server's client certificate towards the
	// agents (clientAuth); they may also serve (serverAuth), so one
	// certificate can secure the server's own API too.
	Server Usage = "server"
)

// CA is a certificate authority loaded from its directory.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	Dir  string
}

// ErrExists is returned when a file would be overwritten without force.
var ErrExists = errors.New("already exists (use --force to replace it)")

// InitCA makes a CA in dir (ca.crt, ca.key), valid for validity. It
// refuses to replace an existing ca.crt or ca.key unless force is set:
// every certificate the old CA issued would stop being trusted.
func InitCA(dir, commonName string, validity time.Duration, force bool) (*CA, error) {
	if commonName == "" {
		commonName = "caretaker CA"
	}
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	if !force {
		for _, p := range []string{certPath, keyPath} {
			if _, err := os.Lstat(p); err == nil {
				return nil, fmt.Errorf("make CA: %s %w", p, ErrExists)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("make CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("make CA: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"caretaker"}},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("make CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("make CA: %w", err)
	}
	if err := writeKey(keyPath, key); err != nil {
		return nil, fmt.Errorf("make CA: %w", err)
	}
	if err := writeCert(certPath, der); err != nil {
		return nil, fmt.Errorf("make CA: %w", err)
	}
	return &CA{Cert: cert, Key: key, Dir: dir}, nil
}

// LoadCA reads the CA of dir.
func LoadCA(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("load CA: %s holds no PEM certificate", filepath.Join(dir, CACertFile))
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, fmt.Errorf("load CA: %s holds no PEM key", filepath.Join(dir, CAKeyFile))
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("load CA: %s is not an ECDSA key", filepath.Join(dir, CAKeyFile))
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("load CA: %s is not a CA certificate", filepath.Join(dir, CACertFile))
	}
	return &CA{Cert: cert, Key: key, Dir: dir}, nil
}

// Request is one certificate to issue.
type Request struct {
	// Name is the certificate's common name and its first DNS SAN: the
	// host's name for an agent, e.g. "caretaker-server" for the server.
	Name string
	// SANs are further names and addresses: each is an IP SAN when it
	// parses as an IP, else a DNS SAN. An agent's certificate must name
	// the address the server dials (the host part of its agent address).
	SANs     []string
	Usage    Usage
	Validity time.Duration
}

// Issue makes a key and a certificate for req, signed by the CA, and
// writes them as <out>/<req.Name>.crt and .key (the key 0600). It refuses
// to overwrite either file unless force is set.
func (ca *CA) Issue(out string, req Request, force bool) (certPath, keyPath string, err error) {
	if req.Name == "" {
		return "", "", errors.New("issue certificate: a name is required")
	}
	if filepath.Base(req.Name) != req.Name || req.Name == "." || req.Name == ".." {
		return "", "", fmt.Errorf("issue certificate: name %q must not contain a slash", req.Name)
	}
	certPath, keyPath = filepath.Join(out, req.Name+".crt"), filepath.Join(out, req.Name+".key")
	if !force {
		for _, p := range []string{certPath, keyPath} {
			if _, err := os.Lstat(p); err == nil {
				return "", "", fmt.Errorf("issue certificate: %s %w", p, ErrExists)
			}
		}
	}
	tmpl, err := template(req)
	if err != nil {
		return "", "", fmt.Errorf("issue certificate for %s: %w", req.Name, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("issue certificate for %s: %w", req.Name, err)
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return "", "", fmt.Errorf("issue certificate for %s: %w", req.Name, err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", "", fmt.Errorf("issue certificate for %s: %w", req.Name, err)
	}
	if err := writeKey(keyPath, key); err != nil {
		return "", "", fmt.Errorf("issue certificate for %s: %w", req.Name, err)
	}
	if err := writeCert(certPath, der); err != nil {
		return "", "", fmt.Errorf("issue certificate for %s: %w", req.Name, err)
	}
	return certPath, keyPath, nil
}

func template(req Request) (*x509.Certificate, error) {
	now := time.Now()
	t := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: req.Name, Organization: []string{"caretaker"}},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(req.Validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	switch req.Usage {
	case Agent:
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	case Server:
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
	default:
		return nil, fmt.Errorf("usage %q: want %q or %q", req.Usage, Agent, Server)
	}
	if req.Validity <= 0 {
		return nil, fmt.Errorf("validity %s must be positive", req.Validity)
	}
	seen := map[string]bool{}
	for _, s := range append([]string{req.Name}, req.SANs...) {
		if s == "" || seen[s] {
			continue
		}
		seen[s] = true
		if ip := net.ParseIP(s); ip != nil {
			t.IPAddresses = append(t.IPAddresses, ip)
		} else {
			t.DNSNames = append(t.DNSNames, s)
		}
	}
	return t, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)) // never fails on Linux
	return n
}

// writeKey writes key as PKCS#8 PEM, mode 0600, replacing the file
// atomically so a reader never sees half a key.
func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func writeCert(path string, der []byte) error {
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
