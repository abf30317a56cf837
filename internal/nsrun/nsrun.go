// Package nsrun runs a function inside a network namespace, so that the
// sockets it opens (a listener, a dial, a raw ICMP socket) live there
// while the rest of the process stays where it is.
package nsrun

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs f on an OS thread in the network namespace at nsPath and
// returns its result. Sockets f opens stay in that namespace. The thread
// is locked to a goroutine of its own and put back into its namespace
// after f; if that fails, it stays locked and the runtime ends it with the
// goroutine rather than reusing it elsewhere.
func Do[T any](nsPath string, f func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		var zero T
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- result{zero, fmt.Errorf("current network namespace: %w", err)}
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(nsPath)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{zero, fmt.Errorf("open network namespace %s: %w", nsPath, err)}
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			ch <- result{zero, fmt.Errorf("enter network namespace %s: %w", nsPath, err)}
			return
		}
		v, ferr := f()
		if err := netns.Set(orig); err != nil {
			// Left locked: the thread dies with this goroutine.
			ch <- result{v, errors.Join(ferr, fmt.Errorf("leave network namespace %s: %w", nsPath, err))}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{v, ferr}
	}()
	r := <-ch
	return r.v, r.err
}
