// Command runbook is the on-call CLI of caretaker: it asks the server what
// the fleet looks like and what the remediation engine did.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := newRootCmd(os.Stdout, os.Stderr, os.Getenv)
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "runbook:", errorText(err))
		os.Exit(1)
	}
}
