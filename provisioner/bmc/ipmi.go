package bmc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/command/chassis"
	"github.com/bougou/go-ipmi/pkg/types"
)

// ipmiPacketWait is how long one request waits for its answer before it
// is sent again within an attempt: ipmitool's lanplus default.
const ipmiPacketWait = time.Second

// ipmiMaxPassword is the longest password IPMI v2.0 carries.
const ipmiMaxPassword = 20

// ipmiController opens a session per operation. Power operations are
// minutes to hours apart, while BMCs drop idle sessions after about a
// minute and offer only a few session slots: a kept session would need a
// keep-alive and re-connect logic and would hold a slot other tools
// (ipmitool, the vendor's console) need. Setting up a session costs a few
// round trips, nothing beside a power cycle.
type ipmiController struct {
	cfg      Config
	host     string
	port     int
	password string
	log      *slog.Logger
}

func newIPMI(cfg Config, password string, log *slog.Logger) (*ipmiController, error) {
	if len(password) > ipmiMaxPassword {
		return nil, fmt.Errorf("read BMC password: %s: IPMI passwords have at most %d bytes", filepath.Join(cfg.SecretsDir, cfg.PasswordFile), ipmiMaxPassword)
	}
	host, port, err := ipmiHostPort(cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("bmc address: %w", err)
	}
	return &ipmiController{cfg: cfg, host: host, port: port, password: password, log: log}, nil
}

// session runs fn in a fresh lanplus session, retrying as configured.
func (c *ipmiController) session(ctx context.Context, op string, fn func(ctx context.Context, cl *client.Client) error) error {
	err := retry(ctx, c.log, op, c.cfg.Timeout, c.cfg.Retries, func(ctx context.Context) error {
		cl, err := client.NewClient(c.host, c.port, c.cfg.Username, c.password)
		if err != nil {
			return permanent(err)
		}
		wait := min(ipmiPacketWait, c.cfg.Timeout)
		// Resend often enough to fill the attempt: the attempt's deadline,
		// not the count, ends a wait for a silent BMC.
		cl.WithTimeout(wait).WithRetry(int(c.cfg.Timeout/wait) + 1)
		// Suite 17 (HMAC-SHA256, AES-128) for current BMCs, then 3
		// (HMAC-SHA1, AES-128), which every lanplus BMC offers. Naming them
		// skips Get Channel Cipher Suites, which some BMCs (ipmi_sim among
		// them) leave unanswered until the attempt times out; suites without
		// authentication are never offered.
		cl.WithCipherSuiteID(types.CipherSuiteID17, types.CipherSuiteID3)
		if err := cl.Connect(ctx); err != nil {
			closeIPMI(ctx, cl, false)
			// go-ipmi joins the per-suite errors as text, losing the chain.
			if errors.Is(err, client.ErrRAKPAuthentication) || strings.Contains(err.Error(), client.ErrRAKPAuthentication.Error()) {
				return permanent(fmt.Errorf("open session as %q: BMC refused the credentials (check username and password_file): %w", c.cfg.Username, oneLine{err}))
			}
			return fmt.Errorf("open session as %q: %w", c.cfg.Username, silentIPMI(err))
		}
		defer closeIPMI(ctx, cl, true)
		return silentIPMI(fn(ctx, cl))
	})
	if err != nil {
		return fmt.Errorf("ipmi %s: %s: %w", c.cfg.Address, op, err)
	}
	return nil
}

// closeIPMI ends the session (when one was opened) and always releases the
// socket; a BMC that does not answer the close costs one packet wait.
func closeIPMI(ctx context.Context, cl *client.Client, opened bool) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ipmiPacketWait)
	if !opened {
		cancel() // nothing to close on the BMC: only release the socket
	}
	defer cancel()
	_ = cl.Close(cctx)
}

// silentIPMI marks go-ipmi's "nothing matched before the read deadline",
// which is not a net.Error, as the timeout it is.
func silentIPMI(err error) error {
	if err == nil {
		return nil
	}
	if msg := err.Error(); strings.Contains(msg, "before UDP read deadline") || strings.Contains(msg, "matched before read deadline") {
		return fmt.Errorf("%w: %w", os.ErrDeadlineExceeded, oneLine{err})
	}
	return oneLine{err}
}

// oneLine flattens go-ipmi's multi-line errors (one line per cipher suite
// tried) for the log.
type oneLine struct{ err error }

func (e oneLine) Error() string { return strings.Join(strings.Fields(e.err.Error()), " ") }
func (e oneLine) Unwrap() error { return e.err }

func (c *ipmiController) PowerStatus(ctx context.Context) (PowerState, error) {
	state := PowerUnknown
	err := c.session(ctx, "power status", func(ctx context.Context, cl *client.Client) error {
		st, err := cl.GetChassisStatus(ctx)
		if err != nil {
			return fmt.Errorf("get chassis status: %w", err)
		}
		state = PowerOff
		if st.PowerIsOn {
			state = PowerOn
		}
		return nil
	})
	return state, err
}

func (c *ipmiController) PowerOn(ctx context.Context) error {
	return c.control(ctx, "power on", chassis.ChassisControlPowerUp)
}

func (c *ipmiController) PowerOff(ctx context.Context) error {
	return c.control(ctx, "power off", chassis.ChassisControlPowerDown)
}

func (c *ipmiController) control(ctx context.Context, op string, ctl chassis.ChassisControl) error {
	return c.session(ctx, op, func(ctx context.Context, cl *client.Client) error {
		c.log.Info("BMC chassis control", "op", op)
		if _, err := cl.ChassisControl(ctx, ctl); err != nil {
			return fmt.Errorf("chassis control: %w", err)
		}
		return nil
	})
}

// PowerCycle reads the power first: a BMC may refuse "power cycle" for a
// host that is off (ipmitool's "power cycle" then fails), and the caller
// wants the host running, so an off host is powered on instead.
func (c *ipmiController) PowerCycle(ctx context.Context) error {
	return c.session(ctx, "power cycle", func(ctx context.Context, cl *client.Client) error {
		st, err := cl.GetChassisStatus(ctx)
		if err != nil {
			return fmt.Errorf("get chassis status: %w", err)
		}
		ctl := chassis.ChassisControlPowerCycle
		if !st.PowerIsOn {
			ctl = chassis.ChassisControlPowerUp
		}
		c.log.Info("BMC chassis control", "op", "power cycle", "was_on", st.PowerIsOn)
		if _, err := cl.ChassisControl(ctx, ctl); err != nil {
			return fmt.Errorf("chassis control: %w", err)
		}
		return nil
	})
}

// pxeOnceFlags is the boot flags parameter (5) for one boot from PXE:
// valid, next boot only, legacy BIOS type as ipmitool's "bootdev pxe".
func pxeOnceFlags() *types.BootOptionParam_BootFlags {
	return &types.BootOptionParam_BootFlags{
		BootFlagsValid:     true,
		Persist:            false,
		BIOSBootType:       types.BIOSBootTypeLegacy,
		BootDeviceSelector: types.BootDeviceSelectorForcePXE,
	}
}

func (c *ipmiController) SetPXEBootOnce(ctx context.Context) error {
	return c.session(ctx, "set PXE boot once", func(ctx context.Context, cl *client.Client) error {
		c.log.Info("BMC boot override", "device", "pxe", "persistent", false)
		// Only parameter 5: "set in progress" (parameter 0) is optional and
		// some BMCs (ipmi_sim among them) reject it.
		if err := cl.SetSystemBootOptionsParamFor(ctx, pxeOnceFlags()); err != nil {
			return fmt.Errorf("set boot flags: %w", err)
		}
		return nil
	})
}
