"""Training on images, below both users of it: minibatch sampling by (seed, step), the transformation
distribution T (EOT) and ℓ∞ PGD on inputs. The generator's min-min-max (``perturb``) and the victims
(``victims``) build on these; TAP's source model is trained as a victim, so ``victims`` sits below ``perturb``."""
