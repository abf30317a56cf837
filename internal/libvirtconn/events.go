package libvirtconn

import (
	"context"
	"fmt"
	"sync"

	"github.com/digitalocean/go-libvirt"
)

// Subscribe registers with libvirtd for the domain events of kind id (all
// domains) on conn, and has handle hear each of them, in the order libvirtd
// sent them, on a goroutine of the subscription's own, until stop is
// called or the connection is lost. handle gets go-libvirt's message of the
// kind (for libvirt.DomainEventIDLifecycle a
// *libvirt.DomainEventCallbackLifecycleMsg); it must not block, nor call
// libvirt. Once stop has returned handle is not called again.
//
// stop makes no call to libvirtd: the registration ends with the
// connection, as a client's registrations do when it quits. Close the
// connection after stop (Conn does, right after its hooks' undo).
// Deregistering first would send calls that race the connection's close:
// the system libvirtd 9.0 died once in this project's tests right after
// such a race ("could not find event callback … for deletion" while
// freeing a closing client's callbacks).
//
// Registering is a round trip: it waits on a frozen libvirtd, as every
// call does.
func Subscribe(conn *libvirt.Libvirt, id libvirt.DomainEventID, handle func(ev any)) (stop func(), err error) {
	// Never cancelled, for the reason above: go-libvirt deregisters when
	// its context ends. Its goroutine ends when the connection does.
	ch, err := conn.SubscribeEvents(context.Background(), id, nil)
	if err != nil {
		return nil, fmt.Errorf("subscribe to libvirt domain events %d: %w", int32(id), err)
	}
	var (
		mu      sync.Mutex
		stopped bool
	)
	go func() {
		for ev := range ch {
			mu.Lock()
			if !stopped {
				handle(ev)
			}
			mu.Unlock()
		}
	}()
	return func() {
		mu.Lock()
		stopped = true
		mu.Unlock()
	}, nil
}
