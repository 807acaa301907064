// Command hds is the sidemesh health discovery service.
package main

import (
	"context"

	"github.com/spf13/pflag"

	"github.com/sidemesh/sidemesh/internal/app"
)

func main() {
	app.Main(app.Spec{
		Name:      "hds",
		EnvPrefix: "HDS",
		Summary:   "sidemesh health discovery service (skeleton: serves only its admin endpoints so far)",
		AdminAddr: "127.0.0.1:9082",
		Flags:     func(fs *pflag.FlagSet) {},
		Run: func(ctx context.Context, env *app.Env) error {
			return env.Serve()
		},
	})
}
