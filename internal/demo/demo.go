// Package demo is the demo backend of proxysession: a small web
// application that sets cookies the way real ones do, so that a person
// can see, behind Envoy and proxysession, which cookies the backend
// receives and which the browser holds.
//
// Logging in sets four cookies: a backend session cookie (HttpOnly), a
// cookie scoped to /account, a persistent "remember me" cookie (Max-Age),
// and a CSRF token that JavaScript reads (XSRF-TOKEN, which proxysession
// must pass through), and names the user to proxysession in
// Proxysession-User. Logging out sends Clear-Site-Data: "cookies";
// logging out everywhere also sends Proxysession-Logout: user, which ends
// every session of the user when proxysession runs with -binding-key-file.
package demo

import (
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"slices"
	"strings"
)

// CSRFCookie is the CSRF token's cookie; proxysession must pass it through
// (-pass-through-cookies) so that the page's JavaScript can read it.
const CSRFCookie = "XSRF-TOKEN"

// UserHeader and LogoutHeader are proxysession's default binding headers
// (sessions.DefaultUserHeader, sessions.DefaultLogoutHeader): the first
// binds the session to a user, the second, with the value "user", ends
// every session of that user. proxysession removes both from responses.
const (
	UserHeader   = "Proxysession-User"
	LogoutHeader = "Proxysession-Logout"
)

// app is the demo application.
type app struct {
	proxyCookie string
	page        *template.Template
}

// New returns the demo application. proxyCookie is proxysession's session
// cookie name, which the page mentions.
func New(proxyCookie string) http.Handler {
	a := &app{proxyCookie: proxyCookie, page: template.Must(template.New("page").Parse(pageHTML))}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", a.show)
	mux.HandleFunc("GET /account/", a.show)
	mux.HandleFunc("POST /login", a.login)
	mux.HandleFunc("POST /logout", a.logout)
	mux.HandleFunc("POST /logout-everywhere", a.logoutEverywhere)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	return mux
}

// pageData is what the page shows.
type pageData struct {
	User        string
	Path        string
	Received    []*http.Cookie // what the backend received
	ProxyCookie string
	CSRF        string
	// InSession says whether the request carried backend cookies other
	// than the pass-through CSRF token: behind proxysession, only a
	// browser that holds a session cookie sends those.
	InSession bool
}

func (a *app) show(w http.ResponseWriter, r *http.Request) {
	d := pageData{Path: r.URL.Path, Received: r.Cookies(), ProxyCookie: a.proxyCookie}
	if c, err := r.Cookie("sid"); err == nil {
		d.User, _, _ = strings.Cut(c.Value, ".")
	}
	if c, err := r.Cookie(CSRFCookie); err == nil {
		d.CSRF = c.Value
	}
	for _, c := range d.Received {
		d.InSession = d.InSession || c.Name != CSRFCookie
	}
	slices.SortFunc(d.Received, func(a, b *http.Cookie) int { return strings.Compare(a.Name, b.Name) })
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := a.page.Execute(w, d); err != nil {
		slog.Error("rendering the page", "error", err)
	}
}

func (a *app) login(w http.ResponseWriter, r *http.Request) {
	user := strings.TrimSpace(r.PostFormValue("user"))
	if user == "" || len(user) > 64 || strings.ContainsAny(user, ".;, \"\\") {
		http.Error(w, "give a user name of up to 64 letters, without spaces or punctuation", http.StatusBadRequest)
		return
	}
	for _, c := range []*http.Cookie{
		{Name: "sid", Value: user + "." + rand.Text(), Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode},
		{Name: "account_tab", Value: "profile", Path: "/account"},
		{Name: "remember_me", Value: user, Path: "/", MaxAge: 30 * 24 * 3600, HttpOnly: true},
		{Name: CSRFCookie, Value: rand.Text(), Path: "/", SameSite: http.SameSiteStrictMode},
	} {
		http.SetCookie(w, c)
	}
	// Binds proxysession's session to the user (with -binding-key-file),
	// so that "log out everywhere" can find all of the user's sessions.
	w.Header().Set(UserHeader, user)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// logout checks the CSRF token (double submit: the form field must equal
// the cookie) and asks the browser, and proxysession, to clear cookies.
func (a *app) logout(w http.ResponseWriter, r *http.Request) {
	if !csrfOK(r) {
		http.Error(w, "CSRF token missing or wrong", http.StatusForbidden)
		return
	}
	clearCookies(w)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// logoutEverywhere is logout, plus Proxysession-Logout: user, which
// ends every session of the session's user, in every browser, on every
// replica, when proxysession runs with -binding-key-file. Without it
// proxysession removes the header and only this browser logs out.
func (a *app) logoutEverywhere(w http.ResponseWriter, r *http.Request) {
	if !csrfOK(r) {
		http.Error(w, "CSRF token missing or wrong", http.StatusForbidden)
		return
	}
	w.Header().Set(LogoutHeader, "user")
	clearCookies(w)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// csrfOK checks the CSRF token by double submit: the form field must
// equal the cookie.
func csrfOK(r *http.Request) bool {
	c, err := r.Cookie(CSRFCookie)
	return err == nil && subtle.ConstantTimeCompare([]byte(c.Value), []byte(r.PostFormValue("csrf"))) == 1
}

// clearCookies asks the browser, and proxysession, to clear cookies.
func clearCookies(w http.ResponseWriter) {
	w.Header().Set("Clear-Site-Data", `"cookies"`)
	for _, name := range []string{"sid", "remember_me", CSRFCookie} {
		http.SetCookie(w, &http.Cookie{Name: name, Path: "/", MaxAge: -1})
	}
}

const pageHTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>proxysession demo</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem}
code,td{font-family:ui-monospace,monospace;font-size:.9em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}.note{color:#555}</style></head>
<body>
<h1>proxysession demo</h1>
{{if .User}}<p>Logged in as <b>{{.User}}</b>. You are on <code>{{.Path}}</code>
({{if eq .Path "/"}}<a href="/account/">go to /account/</a>{{else}}<a href="/">go to /</a>{{end}}).</p>
<form method="post" action="/logout"><input type="hidden" name="csrf" value="{{.CSRF}}"><button>Log out</button></form>
<form method="post" action="/logout-everywhere"><input type="hidden" name="csrf" value="{{.CSRF}}"><button>Log out everywhere</button></form>
<p class="note" id="everywhere-note">"Log out everywhere" ends every session of <code>{{.User}}</code>, in every browser:
the backend answers <code>Proxysession-Logout: user</code>, and named the user at login in
<code>Proxysession-User</code>. That needs proxysession's <code>-binding-key-file</code>; without it,
proxysession just removes the header and only this browser logs out.</p>
{{else}}<form method="post" action="/login"><label>User name <input name="user" required maxlength="64"></label> <button>Log in</button></form>
<p class="note">Logging in sets four cookies: <code>sid</code> (HttpOnly), <code>account_tab</code> (Path=/account),
<code>remember_me</code> (Max-Age 30 days) and <code>XSRF-TOKEN</code> (read by JavaScript).</p>{{end}}

<h2>Cookies the backend received</h2>
{{if .Received}}<table id="received"><tr><th>name</th><th>value</th></tr>
{{range .Received}}<tr><td>{{.Name}}</td><td>{{.Value}}</td></tr>{{end}}</table>
{{else}}<p id="received">None.</p>{{end}}
<p class="note">proxysession keeps the backend's cookies in a server-side session and adds the ones that
match this URL to every request: <code>account_tab</code> appears only under <code>/account/</code>.</p>

<h2>Cookies your browser holds</h2>
<p>Visible to this page's JavaScript: <code id="js-cookies"></code></p>
{{if .InSession}}<p class="note" id="session-note">This request carried backend cookies that proxysession added
from your session, so your browser holds <code>{{.ProxyCookie}}</code>, proxysession's session cookie. It is
HttpOnly, so JavaScript cannot see it; open the developer tools (Application → Cookies) to check that it is
the only other cookie: the backend's <code>sid</code> and <code>remember_me</code> never reached the browser.
<code>XSRF-TOKEN</code> is on proxysession's pass-through list, so the browser gets it as the backend sent it.</p>
{{else}}<p class="note" id="session-note">This request carried no session: your browser holds no
<code>{{.ProxyCookie}}</code> that proxysession knows. proxysession sets it, HttpOnly, when the backend first
sets a cookie (log in), and expires it when you log out.</p>{{end}}
<script>document.getElementById("js-cookies").textContent = document.cookie || "(none)";</script>
</body></html>
`
