"""gpu-deploy: the Pulumi program. Config is read and validated in stacks; this file only hands over."""

import stacks

stacks.main()
