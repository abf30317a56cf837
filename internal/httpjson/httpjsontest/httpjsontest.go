// Package httpjsontest holds what tests of caretaker's HTTP APIs share.
package httpjsontest

import (
	"bufio"
	"net"
	"net/http"
	"testing"
	"time"
)

// StatusWithoutBody sends "method path" to the server at addr with a wrong
// bearer token and a Content-Length of 1000 whose body never comes, and
// returns the status of the answer. A server that reads the body before it
// refuses never answers: the test fails when the read gives up.
func StatusWithoutBody(t testing.TB, addr, method, path string) int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(method + " " + path + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n" +
		"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(time.Minute)) // a bound on a failure only
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%s %s: no answer while the body is missing: %v", method, path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
