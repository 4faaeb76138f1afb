// Package config is proxysession's command-line configuration: flags, their
// PROXYSESSION_* environment variables, defaults and validation. It is a
// package of its own so that tests can check deployment files (compose,
// Kubernetes) against the same parser the binary uses.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/proxysession/proxysession/sessions"
	"github.com/proxysession/proxysession/sessions/redisstore"
)

// Config is the validated configuration of the binary.
type Config struct {
	GRPCAddr  string // host:port, or unix:///path
	AdminAddr string
	// TLS files; TLSClientCA turns on mTLS.
	TLSCert, TLSKey, TLSClientCA string
	LogFormat                    string // text or json
	LogLevel                     slog.Level
	ShutdownGrace, DrainDelay    time.Duration
	// Tracing turns on OpenTelemetry tracing, configured by the standard
	// OTEL_* environment variables.
	Tracing bool

	// Sessions configures the session engine (Logger and Store unset).
	Sessions sessions.Config
	// Store is "memory" or "redis"; Redis configures the latter.
	Store string
	Redis Redis
	// ClearRouteCache asks Envoy to choose the route again when
	// proxysession rewrote the Cookie header (processor.Options).
	ClearRouteCache bool
	// StateFile, with the memory store, is where the sessions are kept
	// across restarts: written on shutdown and every StateInterval (0:
	// only on shutdown), loaded at start. Empty: not kept.
	StateFile     string
	StateInterval time.Duration
	// HTTP is the reverse-proxy mode; off when HTTP.Addr is empty.
	HTTP HTTPProxy
	// Users is the admin API and back-channel logout (users.go).
	Users Users

	cookieSecure                       bool
	sameSite, passThrough, rawLogLevel string
	bindingFiles                       bindingFiles
}

// EnvPrefix prefixes the environment variable of every flag:
// -session-lifetime is PROXYSESSION_SESSION_LIFETIME.
const EnvPrefix = "PROXYSESSION_"

// Redis is the shared store's connection.
type Redis struct {
	// Addrs are host:port seeds: one server, sentinels (with
	// SentinelMaster) or cluster nodes (several, or Cluster).
	Addrs []string
	// URL is a redis:// or rediss:// URL, instead of Addrs.
	URL                string
	Username, Password string
	DB                 int
	TLS                bool
	TLSCA              string // PEM file; the system roots if empty
	SentinelMaster     string
	Cluster            bool
	Timeout            time.Duration // per operation
	KeyPrefix          string
	// WaitReplicas is how many replicas each write waits for (WAIT).
	WaitReplicas int
	rawAddrs     string
}

// Default listen addresses.
const (
	DefaultGRPCAddr  = ":9002"
	DefaultAdminAddr = ":9090"
)

func envName(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// option is one setting: a flag and its environment variable.
type option struct {
	name, usage, def, kind string
	isBool                 bool
	parse                  func(string) error
}

// options collects the settings. Each value is parsed after all sources
// are read, so that every invalid value is reported, not just the first.
type options struct{ list []*option }

func (o *options) add(name, kind, def, usage string, parse func(string) error) {
	o.list = append(o.list, &option{name: name, kind: kind, usage: usage, def: def, isBool: kind == "bool", parse: parse})
}

func (o *options) str(p *string, name, def, usage string) {
	o.add(name, "string", def, usage, func(s string) error { *p = s; return nil })
}

func (o *options) boolean(p *bool, name string, def bool, usage string) {
	o.add(name, "bool", strconv.FormatBool(def), usage, func(s string) error {
		v, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not a boolean", s)
		}
		*p = v
		return nil
	})
}

func (o *options) integer(p *int, name string, def int, usage string) {
	o.add(name, "int", strconv.Itoa(def), usage, func(s string) error {
		v, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("%q is not an integer", s)
		}
		*p = v
		return nil
	})
}

func (o *options) duration(p *time.Duration, name string, def time.Duration, usage string) {
	o.add(name, "duration", def.String(), usage, func(s string) error {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration (like 90s, 15m, 24h)", s)
		}
		*p = v
		return nil
	})
}

func (o *options) size(p *int64, name string, def int64, usage string) {
	o.add(name, "size", FormatSize(def), usage, func(s string) error {
		v, err := ParseSize(s)
		if err != nil {
			return err
		}
		*p = v
		return nil
	})
}

// sizeUnits are the suffixes ParseSize accepts, longest first: binary
// (KiB, and Kubernetes's Ki) and decimal (KB, as in k8s's k/M/G).
var sizeUnits = []struct {
	suffix string
	factor int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"k", 1e3}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12},
	{"B", 1},
}

// ParseSize parses a number of bytes: a whole number with an optional
// unit, binary (256MiB, 1GiB, or 512Mi as in Kubernetes) or decimal (1GB,
// 1G); "268435456" is bytes.
func ParseSize(s string) (int64, error) {
	num, factor := strings.TrimSpace(s), int64(1)
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, factor = strings.TrimSpace(n), u.factor
			break
		}
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v < 0 || v > math.MaxInt64/factor {
		return 0, fmt.Errorf("%q is not a size (a whole number of bytes, or with a unit: 256MiB, 1GiB, 512Mi, 1GB)", s)
	}
	return v * factor, nil
}

// FormatSize formats n bytes the way ParseSize reads them, in the
// largest binary unit that divides it.
func FormatSize(n int64) string {
	for _, u := range []struct {
		suffix string
		factor int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.factor == 0 {
			return strconv.FormatInt(n/u.factor, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// rawFlag holds a flag's text until it is parsed with the others.
type rawFlag struct {
	text   string
	set    bool
	isBool bool
}

func (r *rawFlag) String() string { return r.text }

func (r *rawFlag) Set(s string) error {
	r.text, r.set = s, true
	return nil
}

func (r *rawFlag) IsBoolFlag() bool { return r.isBool }

// Parse reads the flags in args and, for flags not given, the environment
// (through lookupEnv). It returns every problem in one error, or
// flag.ErrHelp after writing the usage to usageOut for -help.
func Parse(args []string, lookupEnv func(string) (string, bool), usageOut io.Writer) (*Config, error) {
	cfg := &Config{}
	o := cfg.options()
	fs, raw := o.flagSet(usageOut)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	var errs []error
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	errs = append(errs, o.parseAll(raw, lookupEnv)...)
	errs = append(errs, cfg.finish()...)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return cfg, nil
}

// options declares the settings, in the order of the usage, each parsed
// into its field of cfg.
func (cfg *Config) options() *options {
	sc := &cfg.Sessions
	o := &options{}
	o.str(&cfg.GRPCAddr, "grpc-addr", DefaultGRPCAddr, "ext_proc gRPC listen address: host:port, or unix:///path/to.sock for a socket shared with Envoy")
	o.str(&cfg.AdminAddr, "admin-addr", DefaultAdminAddr, "admin HTTP listen address for /healthz, /readyz and /metrics")
	o.str(&sc.CookieName, "cookie-name", "", "session cookie name (default "+sessions.DefaultCookieName+", or "+sessions.DefaultInsecureCookieName+" with -cookie-secure=false)")
	o.boolean(&cfg.cookieSecure, "cookie-secure", true, "mark the session cookie Secure; set false only for local development over plain http")
	o.str(&cfg.sameSite, "cookie-samesite", "lax", "session cookie SameSite: lax, strict or none (none needs -cookie-secure)")
	o.duration(&sc.Lifetime, "session-lifetime", sessions.DefaultLifetime, "absolute session lifetime")
	o.duration(&sc.IdleTimeout, "idle-timeout", sessions.DefaultIdleTimeout, "end a session after this long without a request (at most -session-lifetime)")
	o.integer(&sc.MaxSessions, "max-sessions", sessions.DefaultMaxSessions, "sessions the in-memory store holds; beyond that the least used one-shot sessions are evicted")
	o.size(&sc.MaxMemory, "max-memory", sessions.DefaultMaxMemory, "estimated heap the in-memory store's sessions may take, like 256MiB or 1GiB (at least 1MiB); keep it well under the container's memory limit")
	o.duration(&sc.MaxCookieLifetime, "max-cookie-lifetime", sessions.DefaultMaxCookieLifetime, "cap on backend cookies' Expires and Max-Age (at most 9600h, 400 days)")
	o.str(&cfg.passThrough, "pass-through-cookies", "", "comma-separated cookie names that go to the browser untouched, e.g. XSRF-TOKEN,_xsrf")
	o.boolean(&sc.StripBrowserCookies, "strip-browser-cookies", false, "drop every browser cookie but the session cookie and pass-through cookies")
	o.boolean(&sc.TrustForwardedProto, "trust-forwarded-proto", false, "with -cookie-secure=false only: take the browser-facing scheme from X-Forwarded-Proto (a Secure session cookie makes every browser-facing origin https)")
	o.integer(&sc.MaxCookiesPerDomain, "max-cookies-per-domain", sessions.DefaultMaxCookiesPerDomain, "cookies a session keeps per domain (at least 50)")
	o.integer(&sc.MaxCookiesPerSession, "max-cookies-per-session", sessions.DefaultMaxCookiesPerSession, "cookies a session keeps in all")
	o.integer(&sc.MaxBytesPerSession, "max-bytes-per-session", sessions.DefaultMaxBytesPerSession, "bytes of cookies a session keeps (names, values, domains, paths; at least 8192)")
	o.str(&cfg.Store, "store", "memory", "session store: memory (one process) or redis (shared by replicas; Redis or Valkey)")
	o.str(&cfg.Redis.rawAddrs, "redis-addr", "", "with -store redis: comma-separated host:port of the server, the sentinels (with -redis-sentinel-master) or cluster nodes")
	o.str(&cfg.Redis.URL, "redis-url", "", "with -store redis: redis:// or rediss:// URL, instead of -redis-addr")
	o.str(&cfg.Redis.Username, "redis-username", "", "Redis ACL user name")
	o.str(&cfg.Redis.Password, "redis-password", "", "Redis password (prefer the environment variable)")
	o.integer(&cfg.Redis.DB, "redis-db", 0, "Redis database number (not with a cluster)")
	o.boolean(&cfg.Redis.TLS, "redis-tls", false, "connect to Redis over TLS")
	o.str(&cfg.Redis.TLSCA, "redis-tls-ca", "", "PEM CA bundle to verify Redis's certificate (default: the system's)")
	o.str(&cfg.Redis.SentinelMaster, "redis-sentinel-master", "", "Redis Sentinel master name; -redis-addr lists the sentinels")
	o.boolean(&cfg.Redis.Cluster, "redis-cluster", false, "Redis Cluster, even with a single -redis-addr (a configuration endpoint)")
	o.duration(&cfg.Redis.Timeout, "redis-timeout", redisstore.DefaultTimeout, "bound on each Redis operation; keep it well under Envoy's message_timeout (200ms)")
	o.str(&cfg.Redis.KeyPrefix, "redis-key-prefix", redisstore.DefaultKeyPrefix, "prefix of proxysession's Redis keys")
	o.integer(&cfg.Redis.WaitReplicas, "redis-wait-replicas", 0, "with a single server or Sentinel: each write waits, for half of -redis-timeout at most, until this many replicas have it (Redis WAIT), so that a failover loses none it confirmed in time; 0 does not wait")
	o.boolean(&cfg.ClearRouteCache, "clear-route-cache", false, "ask Envoy to choose the route again after proxysession rewrote the Cookie header, for routes that match on cookies (a second route lookup per such request)")
	o.str(&cfg.StateFile, "state-file", "", "with -store memory: keep the sessions in this file across restarts (written sealed, mode 0600, on shutdown and every -state-interval; loaded at start); its directory must be writable")
	o.duration(&cfg.StateInterval, "state-interval", time.Minute, "with -state-file: also write the file this often, bounding what a crash loses (0: only on shutdown)")
	o.str(&cfg.LogFormat, "log-format", "text", "log format: text or json")
	o.str(&cfg.rawLogLevel, "log-level", "info", "log level: debug, info, warn or error")
	o.boolean(&cfg.Tracing, "tracing", false, "OpenTelemetry tracing of ext_proc streams, continuing Envoy's traces; configured by the OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER, OTEL_SERVICE_NAME, ...)")
	o.str(&cfg.TLSCert, "tls-cert", "", "PEM certificate for gRPC over TLS; reloaded when the file changes")
	o.str(&cfg.TLSKey, "tls-key", "", "PEM private key for -tls-cert")
	o.str(&cfg.TLSClientCA, "tls-client-ca", "", "PEM CA bundle: require client certificates signed by it (mTLS)")
	o.duration(&cfg.DrainDelay, "drain-delay", 0, "on SIGTERM, keep accepting new streams this long after reporting not ready, while Envoy's health checks and Kubernetes endpoints catch up (5s in Kubernetes)")
	o.duration(&cfg.ShutdownGrace, "shutdown-grace", 15*time.Second, "on SIGTERM, after -drain-delay, how long in-flight streams may take to finish")
	cfg.HTTP.options(o)
	cfg.bindingOptions(o)
	cfg.Users.options(o)
	return o
}

// flagSet returns a flag set with a flag for each option, whose text raw
// holds, by name, until every value is parsed.
func (o *options) flagSet(usageOut io.Writer) (*flag.FlagSet, map[string]*rawFlag) {
	fs := flag.NewFlagSet("proxysession", flag.ContinueOnError)
	fs.SetOutput(usageOut)
	raw := make(map[string]*rawFlag, len(o.list))
	for _, opt := range o.list {
		r := &rawFlag{text: opt.def, isBool: opt.isBool}
		raw[opt.name] = r
		fs.Var(r, opt.name, opt.usage)
	}
	fs.Usage = func() { o.usage(usageOut) }
	return fs, raw
}

// usage writes the usage, with each flag's environment variable.
func (o *options) usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: proxysession [flags]\n\n"+
		"proxysession is an Envoy ext_proc service that keeps backend cookies in\n"+
		"server-side sessions and gives browsers one session cookie instead.\n\n"+
		"Every flag can also be set by the environment variable shown with it;\n"+
		"a flag given on the command line wins.\n\nFlags:\n")
	for _, opt := range o.list {
		fmt.Fprintf(w, "  -%s %s\n    \t%s\n    \t", opt.name, opt.kind, opt.usage)
		if opt.def != "" {
			fmt.Fprintf(w, "default %s, ", opt.def)
		}
		fmt.Fprintf(w, "env %s\n", envName(opt.name))
	}
}

// parseAll parses every option's text: the flag's if it was given (raw),
// else its environment variable's, else the default. It returns an error
// for each invalid value, naming its source.
func (o *options) parseAll(raw map[string]*rawFlag, lookupEnv func(string) (string, bool)) []error {
	var errs []error
	for _, opt := range o.list {
		source, text := "", opt.def
		if r := raw[opt.name]; r.set {
			source, text = "-"+opt.name, r.text
		} else if v, ok := lookupEnv(envName(opt.name)); ok {
			source, text = "$"+envName(opt.name), v
		}
		if err := opt.parse(text); err != nil {
			if source == "" {
				source = "-" + opt.name
			}
			errs = append(errs, fmt.Errorf("%s: %w", source, err))
		}
	}
	return errs
}

// finish validates and derives the settings that need more than parsing.
func (cfg *Config) finish() []error {
	var errs []error
	sc := &cfg.Sessions
	sc.InsecureCookie = !cfg.cookieSecure
	switch strings.ToLower(cfg.sameSite) {
	case "lax":
		sc.SameSite = sessions.SameSiteLax
	case "strict":
		sc.SameSite = sessions.SameSiteStrict
	case "none":
		sc.SameSite = sessions.SameSiteNone
	default:
		errs = append(errs, fmt.Errorf("-cookie-samesite: %q is not lax, strict or none", cfg.sameSite))
	}
	for name := range strings.SplitSeq(cfg.passThrough, ",") {
		if name = strings.TrimSpace(name); name != "" && !slices.Contains(sc.PassThrough, name) {
			sc.PassThrough = append(sc.PassThrough, name)
		}
	}
	if err := sc.Validate(); err != nil {
		errs = append(errs, errors.Unwrap(err))
	}
	errs = append(errs, cfg.finishHTTP()...)
	if cfg.GRPCAddr == "" && cfg.HTTP.Addr == "" {
		errs = append(errs, errors.New("-grpc-addr: must not be empty"))
	} else if strings.HasPrefix(cfg.GRPCAddr, "unix:") && SocketPath(cfg.GRPCAddr) == "" {
		errs = append(errs, fmt.Errorf("-grpc-addr: %q names no socket path (use unix:///path/to.sock)", cfg.GRPCAddr))
	}
	if cfg.AdminAddr == "" {
		errs = append(errs, errors.New("-admin-addr: must not be empty"))
	}
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		errs = append(errs, errors.New("-tls-cert and -tls-key: give both or neither"))
	}
	if cfg.TLSClientCA != "" && cfg.TLSCert == "" {
		errs = append(errs, errors.New("-tls-client-ca: needs -tls-cert and -tls-key (mTLS is TLS with client certificates)"))
	}
	errs = append(errs, cfg.finishStore()...)
	errs = append(errs, cfg.finishState()...)
	errs = append(errs, cfg.finishBinding()...)
	errs = append(errs, cfg.finishUsers()...)
	switch cfg.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("-log-format: %q is not text or json", cfg.LogFormat))
	}
	if err := cfg.LogLevel.UnmarshalText([]byte(cfg.rawLogLevel)); err != nil {
		errs = append(errs, fmt.Errorf("-log-level: %q is not debug, info, warn or error", cfg.rawLogLevel))
	}
	if cfg.ShutdownGrace < 0 {
		errs = append(errs, fmt.Errorf("-shutdown-grace: %v must not be negative", cfg.ShutdownGrace))
	}
	if cfg.DrainDelay < 0 {
		errs = append(errs, fmt.Errorf("-drain-delay: %v must not be negative", cfg.DrainDelay))
	}
	return errs
}

// finishState validates the state file settings.
func (cfg *Config) finishState() []error {
	var errs []error
	if cfg.StateFile != "" && cfg.Store == "redis" {
		errs = append(errs, errors.New("-state-file: only with -store memory (Redis keeps the sessions itself)"))
	}
	if cfg.StateInterval < 0 || cfg.StateInterval > 0 && cfg.StateInterval < time.Second {
		errs = append(errs, fmt.Errorf("-state-interval: %v: 0 (only on shutdown) or at least 1s", cfg.StateInterval))
	}
	return errs
}

// SocketPath returns the path of a unix: address (unix:///p, unix:/p,
// unix:p), or "".
func SocketPath(addr string) string {
	p := strings.TrimPrefix(addr, "unix:")
	p = strings.TrimPrefix(p, "//")
	return p
}

// finishStore validates the store settings. Redis settings are ignored
// with the memory store, so that an environment can carry them for a
// switch of -store alone.
func (cfg *Config) finishStore() []error {
	var errs []error
	r := &cfg.Redis
	for a := range strings.SplitSeq(r.rawAddrs, ",") {
		if a = strings.TrimSpace(a); a != "" {
			r.Addrs = append(r.Addrs, a)
		}
	}
	switch cfg.Store {
	case "memory":
		return nil
	case "redis":
	default:
		return []error{fmt.Errorf("-store: %q is not memory or redis", cfg.Store)}
	}
	switch {
	case len(r.Addrs) == 0 && r.URL == "":
		errs = append(errs, errors.New("-store redis: give -redis-addr or -redis-url"))
	case len(r.Addrs) > 0 && r.URL != "":
		errs = append(errs, errors.New("-redis-addr and -redis-url: give one, not both"))
	case r.URL != "":
		if _, err := redis.ParseURL(r.URL); err != nil {
			errs = append(errs, fmt.Errorf("-redis-url: %v", err))
		}
		if r.SentinelMaster != "" || r.Cluster {
			errs = append(errs, errors.New("-redis-url: for Sentinel or Cluster use -redis-addr"))
		}
	}
	for _, a := range r.Addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("-redis-addr: %q is not host:port", a))
		}
	}
	if r.SentinelMaster != "" && r.Cluster {
		errs = append(errs, errors.New("-redis-sentinel-master and -redis-cluster: choose one"))
	}
	if r.DB < 0 || (r.DB != 0 && (r.Cluster || len(r.Addrs) > 1 && r.SentinelMaster == "")) {
		errs = append(errs, fmt.Errorf("-redis-db: %d: a database number is for a single server or Sentinel, and not negative", r.DB))
	}
	if r.Timeout < time.Millisecond || r.Timeout > time.Second {
		errs = append(errs, fmt.Errorf("-redis-timeout: %v: must be between 1ms and 1s (Envoy waits 200ms per message by default)", r.Timeout))
	}
	if r.TLSCA != "" && !r.TLS && !strings.HasPrefix(r.URL, "rediss://") {
		errs = append(errs, errors.New("-redis-tls-ca: needs -redis-tls (or a rediss:// URL)"))
	}
	if r.KeyPrefix == "" {
		errs = append(errs, errors.New("-redis-key-prefix: must not be empty"))
	}
	if r.WaitReplicas < 0 || r.WaitReplicas > 0 && (r.Cluster || len(r.Addrs) > 1 && r.SentinelMaster == "") {
		errs = append(errs, fmt.Errorf("-redis-wait-replicas: %d: for a single server or Sentinel, and not negative", r.WaitReplicas))
	}
	return errs
}
