// Command controlplane is the sidemesh xDS control plane.
package main

import (
	"context"

	"github.com/spf13/pflag"

	"github.com/sidemesh/sidemesh/internal/app"
)

func main() {
	app.Main(app.Spec{
		Name:      "controlplane",
		EnvPrefix: "CONTROLPLANE",
		Summary:   "sidemesh xDS control plane (skeleton: serves only its admin endpoints so far)",
		AdminAddr: "127.0.0.1:19000",
		Flags:     func(fs *pflag.FlagSet) {},
		Run: func(ctx context.Context, env *app.Env) error {
			return env.Serve()
		},
	})
}
