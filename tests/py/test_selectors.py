"""Event selectors and insight selectors: PutEventSelectors / GetEventSelectors (basic and
advanced, every validation rule of the reference's §5) and PutInsightSelectors /
GetInsightSelectors (preconditions, InsightNotEnabledException), with boto3 and the AWS CLI v1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest
from botocore.exceptions import ClientError

from conftest import ACCOUNT_ID, aws, cloudtrail_client, uid

HOME = "us-east-1"
OTHER = "eu-west-1"
MGMT_ONLY = [{"Name": "mgmt", "FieldSelectors": [{"Field": "eventCategory", "Equals": ["Management"]}]}]


def expect_error(code: str, status: int, fn: Callable, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(ClientError) as ei:
        fn(*args, **kwargs)
    resp = ei.value.response
    assert resp["Error"]["Code"] == code, resp
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == status, resp


@pytest.fixture(scope="module")
def ct(server):
    return cloudtrail_client(server, HOME)


@pytest.fixture
def trail(server, ct):
    bucket = f"sel-{uid()}"
    os.makedirs(Path(server.data_dir) / "buckets" / bucket)
    name = f"sel-{uid()}"
    arn = ct.create_trail(Name=name, S3BucketName=bucket)["TrailARN"]
    yield name, arn
    try:
        ct.delete_trail(Name=name)
    except ClientError:
        pass


def test_defaults_then_basic_then_advanced(ct, trail):
    name, arn = trail
    got = ct.get_event_selectors(TrailName=name)
    assert got["TrailARN"] == arn
    assert got["EventSelectors"] == [
        {"ReadWriteType": "All", "IncludeManagementEvents": True, "DataResources": [], "ExcludeManagementEventSources": []}
    ]
    assert "AdvancedEventSelectors" not in got
    assert ct.get_trail(Name=name)["Trail"]["HasCustomEventSelectors"] is False

    basic = [{
        "ReadWriteType": "WriteOnly",
        "IncludeManagementEvents": True,
        "DataResources": [{"Type": "AWS::S3::Object", "Values": ["arn:aws:s3:::my-bucket/"]}],
        "ExcludeManagementEventSources": ["kms.amazonaws.com"],
    }]
    put = ct.put_event_selectors(TrailName=name, EventSelectors=basic)
    assert put["TrailARN"] == arn and put["EventSelectors"] == basic
    assert ct.get_event_selectors(TrailName=arn)["EventSelectors"] == basic
    assert ct.get_trail(Name=name)["Trail"]["HasCustomEventSelectors"] is True

    advanced = MGMT_ONLY + [{
        "Name": "s3",
        "FieldSelectors": [
            {"Field": "eventCategory", "Equals": ["Data"]},
            {"Field": "resources.type", "Equals": ["AWS::S3::Object"]},
            {"Field": "resources.ARN", "StartsWith": ["arn:aws:s3:::my-bucket/"]},
        ],
    }]
    ct.put_event_selectors(TrailName=name, AdvancedEventSelectors=advanced)
    got = ct.get_event_selectors(TrailName=name)
    assert got["AdvancedEventSelectors"] == advanced
    assert "EventSelectors" not in got, "applying one kind replaces the other"
    ct.put_event_selectors(TrailName=name, EventSelectors=basic)
    got = ct.get_event_selectors(TrailName=name)
    assert got["EventSelectors"] == basic and "AdvancedEventSelectors" not in got


BAD_BASIC = [
    [{"ReadWriteType": "read-only"}],
    [{"ReadWriteType": "All"}] * 6,
    [{"ExcludeManagementEventSources": ["ec2.amazonaws.com"]}],
    [{"DataResources": [{"Type": "AWS::SNS::Topic", "Values": ["arn:aws:sns"]}]}],
    [{"DataResources": [{"Type": "AWS::S3::Object", "Values": ["arn:aws:lambda"]}]}],
    [{"DataResources": [{"Type": "AWS::S3::Object", "Values": [f"arn:aws:s3:::b{i}/" for i in range(251)]}]}],
]

BAD_ADVANCED = [
    [{"FieldSelectors": [{"Field": "eventName", "Equals": ["X"]}]}],
    [{"FieldSelectors": [{"Field": "eventCategory", "StartsWith": ["Man"]}]}],
    [{"FieldSelectors": [{"Field": "eventCategory", "Equals": ["Insight"]}]}],
    [{"FieldSelectors": [{"Field": "eventCategory", "Equals": ["Data"]}]}],
    [{"FieldSelectors": [{"Field": "eventCategory", "Equals": ["Management"]}, {"Field": "bogusField", "Equals": ["x"]}]}],
    [{"FieldSelectors": [{"Field": "eventCategory", "Equals": ["Management"]}, {"Field": "readOnly", "Equals": ["yes"]}]}],
    [{"FieldSelectors": [{"Field": "eventCategory", "Equals": ["Management"]},
                         {"Field": "eventName", "Equals": [f"n{i}" for i in range(500)]}]}],
]


@pytest.mark.parametrize("selectors", BAD_BASIC)
def test_bad_basic_selectors(ct, trail, selectors):
    expect_error("InvalidEventSelectorsException", 400, ct.put_event_selectors, TrailName=trail[0], EventSelectors=selectors)
    # Nothing changed.
    assert ct.get_trail(Name=trail[0])["Trail"]["HasCustomEventSelectors"] is False


@pytest.mark.parametrize("selectors", BAD_ADVANCED)
def test_bad_advanced_selectors(ct, trail, selectors):
    expect_error("InvalidEventSelectorsException", 400, ct.put_event_selectors, TrailName=trail[0], AdvancedEventSelectors=selectors)


def test_both_kinds_or_neither(ct, trail):
    expect_error("InvalidParameterCombinationException", 400, ct.put_event_selectors,
                 TrailName=trail[0], EventSelectors=[{"ReadWriteType": "All"}], AdvancedEventSelectors=MGMT_ONLY)
    expect_error("InvalidEventSelectorsException", 400, ct.put_event_selectors, TrailName=trail[0])


def test_unknown_trail_and_home_region(server, ct, trail):
    expect_error("TrailNotFoundException", 404, ct.get_event_selectors, TrailName=f"nope-{uid()}")
    other = cloudtrail_client(server, OTHER)
    expect_error("InvalidHomeRegionException", 400, other.put_event_selectors,
                 TrailName=trail[1], AdvancedEventSelectors=MGMT_ONLY)
    # Reading works from anywhere by ARN.
    assert other.get_event_selectors(TrailName=trail[1])["TrailARN"] == trail[1]


def test_insight_selectors(ct, trail):
    name, arn = trail
    expect_error("InsightNotEnabledException", 400, ct.get_insight_selectors, TrailName=name)
    put = ct.put_insight_selectors(TrailName=name, InsightSelectors=[{"InsightType": "ApiCallRateInsight"}])
    assert put["TrailARN"] == arn and put["InsightSelectors"] == [{"InsightType": "ApiCallRateInsight"}]
    assert ct.get_insight_selectors(TrailName=name)["InsightSelectors"] == [{"InsightType": "ApiCallRateInsight"}]
    assert ct.get_trail(Name=name)["Trail"]["HasInsightSelectors"] is True
    # An empty list turns Insights off.
    ct.put_insight_selectors(TrailName=name, InsightSelectors=[])
    expect_error("InsightNotEnabledException", 400, ct.get_insight_selectors, TrailName=name)
    assert ct.get_trail(Name=name)["Trail"]["HasInsightSelectors"] is False
    for bad in ([{"InsightType": "Bogus"}],
                [{"InsightType": "ApiCallRateInsight"}, {"InsightType": "ApiCallRateInsight"}],
                [{"InsightType": "ApiCallRateInsight", "EventCategories": ["Data"]}]):
        expect_error("InvalidInsightSelectorsException", 400, ct.put_insight_selectors, TrailName=name, InsightSelectors=bad)


def test_insight_preconditions_follow_the_event_selectors(ct, trail):
    name, _ = trail
    ct.put_event_selectors(TrailName=name, EventSelectors=[{"ReadWriteType": "ReadOnly", "IncludeManagementEvents": True}])
    # Call-rate Insights need write management events; error-rate ones need read or write.
    expect_error("InvalidInsightSelectorsException", 400, ct.put_insight_selectors,
                 TrailName=name, InsightSelectors=[{"InsightType": "ApiCallRateInsight"}])
    ct.put_insight_selectors(TrailName=name, InsightSelectors=[{"InsightType": "ApiErrorRateInsight"}])
    ct.put_event_selectors(TrailName=name, EventSelectors=[{
        "IncludeManagementEvents": False,
        "DataResources": [{"Type": "AWS::S3::Object", "Values": ["arn:aws:s3"]}],
    }])
    expect_error("InvalidInsightSelectorsException", 400, ct.put_insight_selectors,
                 TrailName=name, InsightSelectors=[{"InsightType": "ApiErrorRateInsight"}])
    ct.put_insight_selectors(TrailName=name, InsightSelectors=[{"InsightType": "ApiErrorRateInsight", "EventCategories": ["Data"]}])


def test_cli_and_restart(server, ct, trail):
    name, arn = trail
    selectors = json.dumps([{"ReadWriteType": "All", "IncludeManagementEvents": True,
                             "DataResources": [{"Type": "AWS::Lambda::Function", "Values": ["arn:aws:lambda"]}]}])
    rc, out, err = aws(server, "cloudtrail", "put-event-selectors", "--trail-name", name, "--event-selectors", selectors)
    assert rc == 0, err
    assert out["EventSelectors"][0]["DataResources"][0]["Type"] == "AWS::Lambda::Function"
    rc, out, err = aws(server, "cloudtrail", "put-event-selectors", "--trail-name", name,
                       "--event-selectors", '[{"ReadWriteType": "sometimes"}]')
    assert rc != 0 and "InvalidEventSelectorsException" in err
    ct.put_insight_selectors(TrailName=name, InsightSelectors=[{"InsightType": "ApiErrorRateInsight"}])
    server.restart()
    ct2 = cloudtrail_client(server, HOME)
    rc, out, err = aws(server, "cloudtrail", "get-event-selectors", "--trail-name", name)
    assert rc == 0, err
    assert out["EventSelectors"] == json.loads(selectors)
    assert ct2.get_insight_selectors(TrailName=arn)["InsightSelectors"] == [{"InsightType": "ApiErrorRateInsight"}]
