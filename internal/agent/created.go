package agent

import "sync"

// created is the set of nodes this agent made through PUT /api/v1/nodes.
// They are its own even when Config.DomainFilter does not match them:
// several simulated hosts share one libvirtd in caretaker lab, and nodes
// are named <cluster>-<pool>-<n>, not after the host the server placed
// them on. It lives in memory only: an agent restarted on a shared
// libvirtd no longer sees the nodes it made.
type created struct {
	mu    sync.RWMutex
	names map[string]struct{}
}

func (c *created) add(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.names == nil {
		c.names = map[string]struct{}{}
	}
	c.names[name] = struct{}{}
}

func (c *created) remove(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.names, name)
}

func (c *created) has(name string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	_, ok := c.names[name]
	return ok
}

// owns tells whether the domain of that name is this agent's: every
// domain without a DomainFilter, else those the filter matches and the
// nodes the agent created.
func (a *Agent) owns(name string) bool {
	f := a.cfg.DomainFilter
	return f == nil || f.MatchString(name) || a.created.has(name)
}
