package pki_test

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"caretaker/internal/pki"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// The CA and the certificates it issues: chain, names, key usages, modes.
func TestIssuedCertificatesVerify(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.InitCA(dir, "", 24*time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	if m := mode(t, filepath.Join(dir, pki.CAKeyFile)); m != 0o600 {
		t.Errorf("ca.key mode %v, want 0600", m)
	}
	caCert := readCert(t, filepath.Join(dir, pki.CACertFile))
	if !caCert.IsCA || caCert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA certificate: IsCA %v, key usage %v", caCert.IsCA, caCert.KeyUsage)
	}
	loaded, err := pki.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Cert.Equal(ca.Cert) {
		t.Error("LoadCA returned another certificate")
	}
	roots := x509.NewCertPool()
	roots.AddCert(caCert)

	out := filepath.Join(dir, "issued")
	agentCrt, agentKey, err := loaded.Issue(out, pki.Request{Name: "hv-a1", SANs: []string{"10.0.0.11", "hv-a1.example.net"},
		Usage: pki.Agent, Validity: time.Hour}, false)
	if err != nil {
		t.Fatal(err)
	}
	srvCrt, srvKey, err := loaded.Issue(out, pki.Request{Name: "caretaker-server", Usage: pki.Server, Validity: time.Hour}, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{agentKey, srvKey} {
		if m := mode(t, k); m != 0o600 {
			t.Errorf("%s mode %v, want 0600", k, m)
		}
	}
	ac := readCert(t, agentCrt)
	if _, err := ac.Verify(x509.VerifyOptions{Roots: roots, DNSName: "hv-a1", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("agent certificate as hv-a1: %v", err)
	}
	if err := ac.VerifyHostname("10.0.0.11"); err != nil {
		t.Errorf("agent certificate does not name its address: %v", err)
	}
	if err := ac.VerifyHostname("hv-b1"); err == nil {
		t.Error("agent certificate of hv-a1 verifies as hv-b1")
	}
	if !slices.Equal(ac.DNSNames, []string{"hv-a1", "hv-a1.example.net"}) || len(ac.IPAddresses) != 1 || !ac.IPAddresses[0].Equal(net.ParseIP("10.0.0.11")) {
		t.Errorf("agent SANs: DNS %v, IP %v", ac.DNSNames, ac.IPAddresses)
	}
	if _, err := ac.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("an agent certificate verifies as a client certificate")
	}
	sc := readCert(t, srvCrt)
	if _, err := sc.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("server certificate as a client: %v", err)
	}
	if !slices.Equal(sc.DNSNames, []string{"caretaker-server"}) || sc.Subject.CommonName != "caretaker-server" {
		t.Errorf("server certificate names: CN %q, DNS %v", sc.Subject.CommonName, sc.DNSNames)
	}

	// Another CA's certificate does not verify.
	other, err := pki.InitCA(t.TempDir(), "other", time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	oc, _, err := other.Issue(t.TempDir(), pki.Request{Name: "hv-a1", Usage: pki.Agent, Validity: time.Hour}, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readCert(t, oc).Verify(x509.VerifyOptions{Roots: roots}); err == nil {
		t.Error("another CA's certificate verifies")
	}
}

// An existing CA or certificate is replaced only with force.
func TestRefusesToOverwrite(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.InitCA(dir, "", time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.InitCA(dir, "", time.Hour, false); !errors.Is(err, pki.ErrExists) {
		t.Errorf("second init: %v, want ErrExists", err)
	}
	still, err := pki.LoadCA(dir)
	if err != nil || !still.Cert.Equal(ca.Cert) {
		t.Fatalf("the CA changed after a refused init: %v", err)
	}
	if _, err := pki.InitCA(dir, "", time.Hour, true); err != nil {
		t.Errorf("init --force: %v", err)
	}
	req := pki.Request{Name: "hv-a1", Usage: pki.Agent, Validity: time.Hour}
	if _, _, err := ca.Issue(dir, req, false); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.Issue(dir, req, false); !errors.Is(err, pki.ErrExists) {
		t.Errorf("second issue: %v, want ErrExists", err)
	}
	if _, _, err := ca.Issue(dir, pki.Request{Name: "../x", Usage: pki.Agent, Validity: time.Hour}, false); err == nil {
		t.Error("a name with a slash was issued")
	}
	if _, _, err := ca.Issue(dir, pki.Request{Name: "x", Usage: "both", Validity: time.Hour}, false); err == nil {
		t.Error("an unknown usage was issued")
	}
}
