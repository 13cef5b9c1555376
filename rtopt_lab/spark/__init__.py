"""Off-policy evaluation and batch policy fitting on Apache Spark, with a laptop's numbers.

Everything :func:`~rtopt_lab.ope.evaluate` and :func:`~rtopt_lab.policies.fit_from_log`
compute is a sum over rows, so Spark computes it partition by partition
(``mapInArrow``: Arrow batches in, one row of sufficient statistics out per partition)
and the driver adds the partitions' statistics in partition order. Each partition runs
the same public per-chunk functions as the in-memory and streamed paths, and the
statistics merge with the same public methods:

==================  ====================================================================
reward model        per fold f and arm a, :math:`\\sum x x^\\top` and :math:`\\sum r x`
                    (folds from a hash of the request id), then the closed-form ridge:
                    :func:`~rtopt_lab.ope.evaluate.reward_model_rows`,
                    :meth:`RewardModel.update <rtopt_lab.ope.RewardModel.update>`,
                    :meth:`~rtopt_lab.ope.RewardModel.merge`
estimators          per-row terms (:func:`~rtopt_lab.ope.evaluate.chunk_terms`) summed into
                    :class:`~rtopt_lab.ope.evaluate.EvaluationSums`: totals, co-moments
                    (Chan et al.'s pairwise update) and Poisson(1) replicate or bucket
                    totals, whose weights hash (request id, replicate index); importance
                    weights' sums, maxima and counts
policies            :math:`A = \\Lambda_0 + \\sum_i w_i \\phi_i \\phi_i^\\top`,
                    :math:`b = \\sum_i w_i r_i \\phi_i` per arm (disjoint) or shared:
                    :func:`~rtopt_lab.policies.learning.fit_statistics`,
                    :func:`~rtopt_lab.policies.learning.merge_statistics`,
                    :func:`~rtopt_lab.policies.learning.add_statistics`
==================  ====================================================================

The final step is :meth:`EvaluationPlan.table <rtopt_lab.ope.evaluate.EvaluationPlan.table>`,
as in ``evaluate``; so on the same rows the numbers equal the in-memory and streamed ones
up to floating-point summation order (relative differences of 1e-12 or less), whatever
the number of partitions.

=================  ======================================================================
:mod:`.session`    :func:`check_java`, :func:`java_major`, :class:`JavaInfo`,
                   :func:`local_session`
:mod:`.evaluate`   :func:`evaluate_spark`
:mod:`.fit`        :func:`fit_spark`
``._io``           reading the data, running a job on every partition, ordered merges
=================  ======================================================================

pyspark is an optional extra (``pip install 'rtopt-lab[spark]'``), imported only inside
the functions; importing this package works without it, and the first Spark function
called raises ImportError saying how to install it. Spark 4 needs Java 17
(:func:`check_java`).

References
----------
T. F. Chan, G. H. Golub, R. J. LeVeque. Updating formulae and a pairwise algorithm for
computing sample variances. Stanford CS tech. report STAN-CS-79-773, 1979.
N. Chamandy, O. Muralidharan, A. Najmi, S. Naidu. Estimating uncertainty for massive data
streams. Google technical report, 2012.
"""

from rtopt_lab.spark.evaluate import evaluate_spark
from rtopt_lab.spark.fit import fit_spark
from rtopt_lab.spark.session import JavaInfo, check_java, java_major, local_session

__all__ = ["JavaInfo", "check_java", "evaluate_spark", "fit_spark", "java_major", "local_session"]
